"""The local model store: install / activate / rollback / remove, refusals, and crash safety (SIGKILL)."""

from __future__ import annotations

import json
import os
import signal
import stat
from pathlib import Path

import pytest

from edge_runtime import bundle
from edge_runtime.errors import BundleError, StoreError
from edge_runtime.store import Store

from support import paused_cli
from support.bundle_factory import make_bundle, predict, trusted_signer


@pytest.fixture
def empty_home(tmp_path):
    """A fresh EDGE_RUNTIME_HOME (conftest's `home` holds the small bundle; these tests start from nothing)."""
    return tmp_path / "home"


@pytest.fixture
def key(empty_home):
    return trusted_signer(empty_home)


@pytest.fixture
def store(empty_home):
    return Store(empty_home)


@pytest.fixture
def make(tmp_path, key):
    made = []

    def factory(version="1.0.0", release=1, signed=True, **kw):
        made.append(version)
        return make_bundle(
            tmp_path / "src" / f"{len(made)}-{version}", key if signed else None, version=version, release=release, **kw
        ).path

    return factory


def snapshot(root: Path) -> dict:
    """Every file under the store with its bytes: 'nothing changed' means this is equal."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def stray_dirs(store: Store) -> list[str]:
    return sorted(p.name for p in store.models.iterdir() if p.name.startswith("."))


# --- install ------------------------------------------------------------------------------------


def test_install_copies_verifies_and_freezes(store, make):
    manifest = store.install(make())
    target = store.models / "tiny" / "1.0.0"
    assert manifest.path == target and manifest.signers
    assert [m.ref for m in store.versions()] == ["tiny@1.0.0"]
    assert stat.S_IMODE((target / "model.onnx").stat().st_mode) == 0o444
    assert store.active() is None  # installing does not activate
    assert [d for d in stray_dirs(store) if d != ".lock"] == []


def test_install_from_archive(store, make, tmp_path):
    archive = bundle.pack(make(), tmp_path / "tiny.erb")
    assert store.install(archive).path == store.models / "tiny" / "1.0.0"
    assert store.verify("tiny@1.0.0").ref == "tiny@1.0.0"


def test_identical_reinstall_is_a_noop_and_different_contents_are_refused(store, make):
    source = make()
    store.install(source)
    before = snapshot(store.root)
    store.install(source)
    assert snapshot(store.root) == before
    other = make(seed=1)  # same name, version and release, different weights
    with pytest.raises(StoreError, match="already installed with different contents"):
        store.install(other)
    assert snapshot(store.root) == before


def test_reinstall_repairs_a_damaged_copy(store, make):
    source = make()
    target = store.install(source).path
    os.chmod(target / "labels.json", 0o644)
    (target / "labels.json").write_text('["x", "y", "z"]')
    assert store.verify_all()[0][2] is False
    store.install(source)
    assert store.verify_all() == [("tiny", "1.0.0", True, "")]


def test_release_numbers_are_unique_per_name(store, make):
    store.install(make("1.0.0", 1))
    with pytest.raises(StoreError, match="release 1 is already used by tiny@1.0.0"):
        store.install(make("1.0.1", 1))


TAMPER = {
    "model.onnx: sha256 mismatch": lambda p: (p / "model.onnx").write_bytes(
        bytes([(p / "model.onnx").read_bytes()[0] ^ 1]) + (p / "model.onnx").read_bytes()[1:]
    ),
    "not signed (pass --allow-unsigned": lambda p: (p / "signature.json").unlink(),
    "extra.bin: not listed": lambda p: (p / "extra.bin").write_bytes(b"\0"),
    "tokenizer.json: missing": lambda p: (p / "tokenizer.json").unlink(),
    "signature does not verify": lambda p: (p / "manifest.json").write_text(
        (p / "manifest.json").read_text().replace('"release": 2', '"release": 9')
    ),
}


@pytest.mark.parametrize("reason", sorted(TAMPER))
def test_tampered_install_changes_nothing(store, make, reason):
    store.activate(store.install(make("1.0.0", 1)).name)
    before = snapshot(store.root)
    bad = make("2.0.0", 2)
    TAMPER[reason](bad)
    with pytest.raises(BundleError, match=reason.replace("(", r"\(")):
        store.install(bad)
    assert snapshot(store.root) == before
    assert [m.ref for m in store.versions()] == ["tiny@1.0.0"]


def test_unsigned_needs_the_flag_at_every_step(store, make):
    source = make(signed=False)
    with pytest.raises(BundleError, match="not signed"):
        store.install(source)
    store.install(source, allow_unsigned=True)
    with pytest.raises(BundleError, match="not signed"):
        store.activate("tiny")
    store.activate("tiny", allow_unsigned=True)
    assert store.active() == ("tiny", "1.0.0")
    assert store.verify_all()[0][2] is False and store.verify_all(allow_unsigned=True)[0][2] is True


# --- activate / rollback / remove ---------------------------------------------------------------


def test_activate_latest_and_roll_back(store, make):
    for version, release in (("1.0.0", 1), ("1.1.0", 2), ("1.0.1", 3)):
        store.install(make(version, release))
    assert store.activate("tiny").version == "1.0.1"  # latest by release, not by semver
    assert store.active() == ("tiny", "1.0.1") and store.previous() is None
    store.activate("tiny", "1.0.0")
    state = json.loads((store.models / "active.json").read_text())
    assert state == {"name": "tiny", "version": "1.0.0", "previous": {"name": "tiny", "version": "1.0.1"}}
    assert store.rollback().version == "1.0.1"
    assert (store.active(), store.previous()) == (("tiny", "1.0.1"), ("tiny", "1.0.0"))
    store.rollback()
    assert store.active() == ("tiny", "1.0.0")
    store.activate("tiny", "1.0.0")  # re-activating the active one keeps `previous`
    assert store.previous() == ("tiny", "1.0.1")
    assert store.active_path() == store.models / "tiny" / "1.0.0"


def test_nothing_to_roll_back(store, make):
    with pytest.raises(StoreError, match="nothing to roll back to"):
        store.rollback()
    store.activate(store.install(make()).name)
    with pytest.raises(StoreError, match="nothing to roll back to"):
        store.rollback()


def test_activation_reverifies(store, make):
    store.install(make("1.0.0", 1))
    store.activate("tiny")
    target = store.install(make("2.0.0", 2)).path
    os.chmod(target / "model.onnx", 0o644)
    with open(target / "model.onnx", "r+b") as handle:
        handle.seek(50)
        handle.write(b"\xff")
    with pytest.raises(BundleError, match=r"tiny@2.0.0: model.onnx: sha256 mismatch"):
        store.activate("tiny", "2.0.0")
    assert store.active() == ("tiny", "1.0.0")


def test_activate_unknown(store):
    with pytest.raises(StoreError, match="ghost: not installed"):
        store.activate("ghost")
    with pytest.raises(StoreError, match="ghost@1.0.0: not installed"):
        store.activate("ghost", "1.0.0")
    with pytest.raises(StoreError, match="not a model reference"):
        store.activate("tiny", "../../etc")


def test_remove_keeps_active_and_previous(store, make):
    for version, release in (("1.0.0", 1), ("2.0.0", 2), ("3.0.0", 3)):
        store.install(make(version, release))
    store.activate("tiny", "1.0.0")
    store.activate("tiny", "2.0.0")
    with pytest.raises(StoreError, match="is the active model"):
        store.remove("tiny", "2.0.0")
    with pytest.raises(StoreError, match="is the rollback target"):
        store.remove("tiny", "1.0.0")
    store.remove("tiny", "3.0.0")
    assert [m.version for m in store.versions()] == ["1.0.0", "2.0.0"]
    assert not (store.models / "tiny" / "3.0.0").exists()
    with pytest.raises(StoreError, match="not installed"):
        store.remove("tiny", "3.0.0")


def test_remove_last_version_removes_the_name_dir(store, make):
    store.install(make())
    store.remove("tiny", "1.0.0")
    assert not (store.models / "tiny").exists() and store.versions() == []


# --- resolve / verify_all -----------------------------------------------------------------------


def test_resolve(store, make, tmp_path):
    source = make("1.0.0", 1)
    store.install(source)
    store.install(make("2.0.0", 2))
    assert store.resolve("tiny") == store.models / "tiny" / "2.0.0"  # nothing active: latest release
    store.activate("tiny", "1.0.0")
    assert store.resolve("tiny") == store.models / "tiny" / "1.0.0"  # the active version of that name
    assert store.resolve(None) == store.models / "tiny" / "1.0.0"
    assert store.resolve("tiny@2.0.0") == store.models / "tiny" / "2.0.0"
    assert store.resolve(str(source)) == source
    unpacked = store.resolve(bundle.pack(source, tmp_path / "x.erb"))
    assert unpacked.parent == store.root / "cache" / "bundles"
    assert bundle.verify(unpacked, store.trusted_keys()).ref == "tiny@1.0.0"
    assert store.resolve(str(tmp_path / "x.erb")) == unpacked  # unpacked once
    with pytest.raises(StoreError, match="no installed model or bundle path"):
        store.resolve("ghost")
    with pytest.raises(StoreError, match="tiny@9.9.9: not installed"):
        store.resolve("tiny@9.9.9")
    with pytest.raises(StoreError, match="no such bundle"):
        store.resolve(str(tmp_path / "missing.erb"))


def test_verify_all_reports_damage_and_a_missing_active_model(store, make):
    store.install(make("1.0.0", 1))
    target = store.install(make("2.0.0", 2)).path
    os.chmod(target / "golden.jsonl", 0o644)
    (target / "golden.jsonl").unlink()
    report = store.verify_all()
    assert report == [("tiny", "1.0.0", True, ""), ("tiny", "2.0.0", False, "golden.jsonl: missing")]
    (store.models / "active.json").write_text(json.dumps({"name": "gone", "version": "1.0.0", "previous": None}))
    assert store.verify_all()[-1] == ("gone", "1.0.0", False, "the active model is not installed")


def test_no_active_model(store):
    assert store.active() is None and store.versions() == [] and store.verify_all() == []
    with pytest.raises(StoreError, match="no active model"):
        store.active_path()


# --- crash safety -------------------------------------------------------------------------------


def run_paused(home: Path, point: str, marker: Path, *args: str) -> None:
    """Run `edge-runtime ARGS` on HOME in a child that pauses at the store's commit POINT; SIGKILL it there."""
    env = {**os.environ, "EDGE_RUNTIME_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    child = paused_cli.run_until_paused(point, marker, *args, env=env)
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL


def test_kill_during_activation_keeps_the_previous_model(store, make, tmp_path):
    store.install(make("1.0.0", 1))
    store.install(make("2.0.0", 2))
    store.activate("tiny", "1.0.0")
    before = (store.models / "active.json").read_bytes()
    run_paused(store.root, "store-activate", tmp_path / "paused", "models", "activate", "tiny@2.0.0")
    assert (tmp_path / "paused").read_text() == "store-activate"
    assert (store.models / "active.json").read_bytes() == before
    assert store.active() == ("tiny", "1.0.0")
    manifest = store.verify()
    assert manifest.ref == "tiny@1.0.0"
    assert predict(store.active_path(), ["hello"])[0] in manifest.labels()  # it still loads and runs
    assert [m.ref for m in store.versions()] == ["tiny@1.0.0", "tiny@2.0.0"]
    store.activate("tiny", "2.0.0")  # the lock died with the child
    assert store.active() == ("tiny", "2.0.0")


def test_kill_during_install_leaves_no_half_version(store, make, tmp_path):
    store.activate(store.install(make("1.0.0", 1)).name)
    source = make("2.0.0", 2)
    run_paused(store.root, "store-install", tmp_path / "paused", "models", "install", str(source))
    assert (tmp_path / "paused").read_text() == "store-install"
    assert any(name.startswith(".install-") for name in stray_dirs(store))  # the child's staging dir
    assert [m.ref for m in store.versions()] == ["tiny@1.0.0"]
    assert [r[:3] for r in store.verify_all()] == [("tiny", "1.0.0", True)]
    assert store.active() == ("tiny", "1.0.0")
    store.install(source)  # a later install works and sweeps the leftovers
    assert [m.ref for m in store.versions()] == ["tiny@1.0.0", "tiny@2.0.0"]
    assert not any(name.startswith(".install-") for name in stray_dirs(store))
    assert store.verify("tiny@2.0.0").ref == "tiny@2.0.0"


# --- crafted archives: refused before anything large is written, nothing left behind ----------------

BIG = 8 << 20  # far above the file-size limit the installing process runs under


def install_under_file_size_limit(home: Path, archive: Path, limit: int = 1 << 20):
    """`edge-runtime models install ARCHIVE` in a process that cannot write any file larger than `limit`
    (RLIMIT_FSIZE; Python ignores SIGXFSZ, so a larger write fails with EFBIG): a refusal for the expected
    reason proves the archive was refused before its large member was written."""
    import resource
    import subprocess
    import sys

    from support import pythonpath

    def limit_writes():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run(
        [sys.executable, "-m", "edge_runtime", "models", "install", str(archive)],
        env={**os.environ, "EDGE_RUNTIME_HOME": str(home), "PYTHONPATH": pythonpath()},
        preexec_fn=limit_writes,
        capture_output=True,
        text=True,
        timeout=120,
    )


def leftovers(store: Store) -> list[str]:
    found = [p for p in store.models.rglob("*") if p.name != ".lock"] if store.models.exists() else []
    cache = store.root / "cache" / "bundles"
    found += list(cache.rglob("*")) if cache.exists() else []
    return sorted(str(p) for p in found)


def tar_with(path: Path, source: Path, names: list[str], extra: dict[str, bytes] | None = None) -> Path:
    """A tar of SOURCE's files NAMES in that order, with EXTRA's members (name -> data) right after
    signature.json."""
    import io
    import tarfile

    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in names:
            tar.add(source / name, arcname=name)
            if name == bundle.SIGNATURE:
                for extra_name, data in (extra or {}).items():
                    info = tarfile.TarInfo(extra_name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return path


def test_badly_signed_archive_is_refused_before_its_payload_is_written(store, make, tmp_path):
    from edge_runtime import signing

    source = make()
    (source / "blob.bin").write_bytes(b"\0" * BIG)
    raw = json.loads((source / bundle.MANIFEST).read_text())
    untrusted = signing.generate_keypair()[0]
    bundle.finalize(source, {k: v for k, v in raw.items() if k not in ("files", "created")}, untrusted)
    archive = bundle.pack(source, tmp_path / "bad-signature.erb")
    result = install_under_file_size_limit(store.root, archive)
    assert result.returncode == 1, result
    assert "signed by untrusted key" in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert leftovers(store) == []
    with pytest.raises(BundleError, match="untrusted key"):  # nor does a path load fill cache/bundles
        store.resolve(archive)
    assert leftovers(store) == []


def test_member_not_in_the_manifest_is_refused_before_it_is_written(store, make, tmp_path):
    source = make()
    names = [bundle.MANIFEST, bundle.SIGNATURE, *sorted(bundle.read_manifest(source).files)]
    archive = tar_with(tmp_path / "extra.erb", source, names, {"extra.bin": b"\0" * BIG})
    result = install_under_file_size_limit(store.root, archive)
    assert result.returncode == 1 and "extra.bin: not listed in manifest.json" in result.stderr, result
    assert leftovers(store) == []


def test_member_larger_than_its_manifest_size_is_refused_before_it_is_written(store, make, tmp_path):
    source = make()
    names = [bundle.MANIFEST, bundle.SIGNATURE, *sorted(bundle.read_manifest(source).files)]
    names.remove("labels.json")
    archive = tar_with(tmp_path / "long.erb", source, names, {"labels.json": b"[" + b" " * BIG + b"]"})
    result = install_under_file_size_limit(store.root, archive)
    assert result.returncode == 1 and "labels.json" in result.stderr, result
    assert "larger than its manifest size" in result.stderr, result.stderr
    assert leftovers(store) == []


def test_huge_pax_header_is_refused_without_reading_it(store, make, tmp_path):
    """tarfile would read the whole extended header into memory; the archive is otherwise valid and signed."""
    import tarfile
    import tracemalloc

    source = make()
    archive = tmp_path / "pax.erb"
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in [bundle.MANIFEST, bundle.SIGNATURE, *sorted(bundle.read_manifest(source).files)]:
            info = tar.gettarinfo(source / name, arcname=name)
            if name == bundle.MANIFEST:
                info.pax_headers = {"comment": "x" * (32 << 20)}
            with open(source / name, "rb") as handle:
                tar.addfile(info, handle)
    tracemalloc.start()
    try:
        with pytest.raises(BundleError, match="PAX header of .* bytes exceeds"):
            store.install(archive)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"{peak} bytes allocated while refusing"
    assert leftovers(store) == []
