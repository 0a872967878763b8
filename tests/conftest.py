"""Shared fixtures: a small real CLINC150 bundle (real MiniLM export, INT8), built once per session.

Tests that change a store get their own copy (`home`); read-only tests share `bundle_home`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edge_runtime import signing

from support import bundle_factory, mqtt_broker
from support.stores import store_with

pytest_plugins = ["support.pii_twins"]  # the `scan` fixture: each PII scanner twin in turn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# CI sets this: a test that skips because mosquitto, network namespaces, a tmpfs mount, the compiled
# kernels or an optional dependency is missing fails instead, so a whole area cannot go quietly untested.
REQUIRE_ALL = os.environ.get("EDGE_RUNTIME_REQUIRE_ALL") == "1"


def _fail_skip(report) -> None:
    if REQUIRE_ALL and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped, and EDGE_RUNTIME_REQUIRE_ALL=1 forbids skips: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    _fail_skip((yield).get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    _fail_skip((yield).get_result())  # a module-level importorskip skips the whole file at collection


def pytest_terminal_summary(terminalreporter):
    """One line CI can show and check: how many tests skipped (0 is the only good number in CI)."""
    skipped = len(terminalreporter.stats.get("skipped", []))
    terminalreporter.write_line(f"skipped: {skipped} (EDGE_RUNTIME_REQUIRE_ALL={int(REQUIRE_ALL)})")


@pytest.fixture(scope="session")
def build_key(tmp_path_factory) -> Path:
    from edge_runtime import signing

    key_path = tmp_path_factory.mktemp("keys") / "build.key"
    private, _ = signing.generate_keypair()
    signing.save_private_key(key_path, private)
    return key_path


@pytest.fixture(scope="session")
def small_bundle(tmp_path_factory, build_key) -> Path:
    """A signed bundle directory: 10 CLINC150 intents + oos, logistic-regression head, INT8."""
    pytest.importorskip("optimum", reason="building a bundle needs the [build] extra")
    from support.small_bundle import build_small_bundle

    out = tmp_path_factory.mktemp("bundles") / "clinc-small"
    return build_small_bundle(out, key_path=build_key, cache_dir=tmp_path_factory.mktemp("build-cache"))


@pytest.fixture(scope="session")
def bundle_home(tmp_path_factory, small_bundle, build_key) -> Path:
    """A store (EDGE_RUNTIME_HOME) that trusts the build key, with the small bundle active. Read-only."""
    return store_with(tmp_path_factory.mktemp("home"), small_bundle, build_key)


@pytest.fixture
def home(tmp_path, small_bundle, build_key, monkeypatch) -> Path:
    """A private store with the small bundle active, set as EDGE_RUNTIME_HOME."""
    root = store_with(tmp_path / "home", small_bundle, build_key)
    monkeypatch.setenv("EDGE_RUNTIME_HOME", str(root))
    # A device configured without a tagger (scanner only): with one configured but not installed, every
    # escalation would stay local (privacy_unavailable). The tagger tests configure it themselves.
    monkeypatch.setenv("EDGE_RUNTIME_PRIVACY_TAGGER", "")
    return root


@pytest.fixture(scope="session")
def small_val_rows(small_bundle) -> list[str]:
    """CLINC150 val lines whose label the small bundle knows (20 per intent, 100 oos)."""
    import json

    from support.small_bundle import datasets_dir

    labels = set(json.loads((small_bundle / "labels.json").read_text()))
    return [
        line
        for line in (datasets_dir() / "clinc150" / "val.jsonl").read_text().splitlines()
        if json.loads(line)["label"] in labels
    ]


@pytest.fixture(scope="session")
def pii_tagger_bundle(tmp_path_factory, build_key) -> Path:
    """The PII tagger exactly as its recipe ships (models/pii-tagger-minilm). Fine-tuning takes ~11 minutes
    on 2 cores; with $EDGE_RUNTIME_TEST_CACHE set (scripts/test.sh sets it) the second pytest run of
    `make test` reuses it from there."""
    pytest.importorskip("optimum", reason="building a bundle needs the [build] extra")
    pytest.importorskip("faker", reason="the tagger's training corpus comes from Faker")
    from edge_runtime import signing
    from edge_runtime.build import pii_corpus
    from edge_runtime.build.default import config_from_recipe, tagger_corpus
    from edge_runtime.build.progress import Silent
    from edge_runtime.build.recipe import TAGGER_RECIPE, load_recipe
    from edge_runtime.build.tagger import build_tagger

    recipe = load_recipe(TAGGER_RECIPE)
    root = tmp_path_factory.mktemp("tagger-home")
    out = tmp_path_factory.mktemp("bundles") / "pii-tagger"
    shared = os.environ.get("EDGE_RUNTIME_TEST_CACHE")
    cache = Path(shared) / "pii-tagger-build" if shared else tmp_path_factory.mktemp("tagger-cache")
    config = config_from_recipe(recipe, root, out, cache)
    config.private_key = signing.load_private_key(build_key)
    train, val = tagger_corpus(recipe)
    return build_tagger(config, train, val, pii_corpus.TAGS, Silent()).path


@pytest.fixture(scope="session")
def pii_tagger_home(tmp_path_factory, pii_tagger_bundle, build_key) -> Path:
    """A store that trusts the build key, with the tagger installed (not active: it is not served)."""
    from edge_runtime import signing
    from edge_runtime.store import Store

    root = tmp_path_factory.mktemp("tagger-store")
    signing.trust_key(root, signing.load_private_key(build_key).public_key())
    Store(root).install(pii_tagger_bundle)
    return root


@pytest.fixture(scope="session")
def pii_tagger(pii_tagger_home):
    """The tagger as egress runs it."""
    import edge_runtime
    from edge_runtime.pii_tagger import PiiTagger

    return PiiTagger(edge_runtime.load("pii-tagger-minilm", root=pii_tagger_home, threads=1))


@pytest.fixture
def broker():
    """A mosquitto of this test's own on a free port (test_uplink and the fleet tests keep one per module)."""
    if not mqtt_broker.available():
        pytest.skip("mosquitto is not installed")
    with mqtt_broker.Broker() as running:
        yield running


@pytest.fixture(scope="module")
def fleet_key():
    """The fleet tests' signing key (bundles, release records, desired states), one per test module."""
    return signing.generate_keypair()[0]


@pytest.fixture
def tiny_home(tmp_path) -> Path:
    """A store trusting a fresh key, holding a signed tiny classifier at <home>/tiny (not installed: --bundle PATH)."""
    home = tmp_path / "home"
    home.mkdir()
    bundle_factory.make_bundle(home / "tiny", bundle_factory.trusted_signer(home), name="tiny-upstream")
    return home
