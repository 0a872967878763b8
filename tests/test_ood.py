"""The out-of-scope score at run time (edge_runtime/ood.py): bundles with and without the pooled output, the
score against an independent Mahalanobis computation, the reject label, the router's max_ood, and the
parameters file under the manifest's hashes and signature. Real ONNX graphs (tests/support/bundle_factory.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import edge_runtime
from edge_runtime import bundle
from edge_runtime.errors import BundleError
from edge_runtime.ood import OodParameters
from edge_runtime.router import Router, RoutingPolicy
from edge_runtime.store import Store

from support.bundle_factory import DIM, make_bundle, onnx_classifier, pooled_embeddings, trusted_signer

pytestmark = pytest.mark.kernels  # the scores come from the ood kernel

TEXTS = [
    "what is my account balance",
    "play some jazz music",
    "book a table for two tonight",
    "how tall is the eiffel tower",
    "zxqv blorp snark",
    "transfer fifty dollars to my savings",
    "is it going to rain tomorrow",
    "tell me a joke",
]
LABELS = ("negative", "neutral", "positive", "oos")


def parameters(seed: int = 0, classes: int = 3) -> tuple[OodParameters, np.ndarray, np.ndarray]:
    """Parameters as the build writes them, from a known covariance and class means: (parameters, covariance,
    means), so a test can compute the distance the long way."""
    rng = np.random.default_rng(seed)
    root = rng.normal(size=(DIM, DIM))
    covariance = root @ root.T / DIM + 0.05 * np.eye(DIM)
    means = rng.normal(size=(classes, DIM))
    values, vectors = np.linalg.eigh(covariance)
    whiten = vectors / np.sqrt(values)
    return (
        OodParameters(whiten.astype(np.float32), (means @ whiten).astype(np.float32), math.log(20.0), 0.7),
        covariance,
        means,
    )


def expected_scores(bundle_dir, texts, covariance, means, location, scale) -> np.ndarray:
    inverse = np.linalg.inv(covariance)
    pooled = pooled_embeddings(bundle_dir, texts)
    distance = np.array([min((x - m) @ inverse @ (x - m) for m in means) for x in pooled])
    return 1.0 / (1.0 + np.exp(-(np.log(distance) - location) / scale))


@pytest.fixture
def store(tmp_path):
    return tmp_path / "home"


def signed(store, tmp_path, name="b", **kwargs):
    key = trusted_signer(store)
    return make_bundle(tmp_path / name, key, **kwargs).path


def test_a_bundle_without_the_pooled_output_runs_as_before(store, tmp_path):
    path = signed(store, tmp_path)
    model = edge_runtime.load(path, root=store)
    assert model.ood is None and model.session.output_names == ["logits"]
    logits, ood = model.logits_and_ood(TEXTS)
    assert ood is None and logits.shape == (len(TEXTS), 3)
    predictions = model.predict(TEXTS)
    assert all(p.ood is None for p in predictions)
    assert all(p.to_dict()["ood"] is None for p in predictions)
    # a policy with max_ood set cannot escalate a prediction that has no score
    router = Router(RoutingPolicy(max_ood=0.0))
    assert all(not p.reason.startswith("max_ood") for p in router.route_all(predictions))


def test_a_pooled_output_without_a_score_is_fetched_never(store, tmp_path):
    path = signed(store, tmp_path, pooled_output=True)
    model = edge_runtime.load(path, root=store)
    assert model.session.output_names == ["logits", "pooled"] and model.ood is None
    assert all(p.ood is None for p in model.predict(TEXTS))


def test_the_score_is_the_mahalanobis_distance_of_the_graphs_pooled_embedding(store, tmp_path):
    ood, covariance, means = parameters()
    path = signed(store, tmp_path, ood=ood)
    model = edge_runtime.load(path, root=store)
    want = expected_scores(path, TEXTS, covariance, means, ood.location, ood.scale)
    got = np.array([p.ood for p in model.predict(TEXTS)])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert 0.0 < got.min() < got.max() < 1.0  # the known parameters spread these texts inside 0..1
    # the same scores from the batch path calibrate and crossfit.py read (length buckets: max_batch 2)
    batched = edge_runtime.load(path, root=store, max_batch=2)
    _, scores = batched.logits_and_ood(TEXTS)
    np.testing.assert_allclose(scores, got, rtol=1e-6)
    assert json.loads(json.dumps(model.predict(TEXTS[:1])[0].to_dict()))["ood"] == pytest.approx(got[0])


def test_above_the_reject_threshold_the_answer_is_the_reject_label(store, tmp_path):
    ood, _, _ = parameters(classes=3)
    plain = signed(store, tmp_path, "plain", labels=LABELS, ood=ood)
    scores = np.array([p.ood for p in edge_runtime.load(plain, root=store).predict(TEXTS)])
    cut = float(np.median(scores))
    post = {
        **json.loads((plain / "manifest.json").read_text())["postprocess"],
        "reject_label": "oos",
        "ood": {"file": "ood.npz", "output": "pooled", "method": "mahalanobis", "reject_threshold": cut},
    }
    path = signed(store, tmp_path, "rejecting", labels=LABELS, ood=ood, manifest_updates={"postprocess": post})
    before = edge_runtime.load(plain, root=store).predict(TEXTS)
    after = edge_runtime.load(path, root=store).predict(TEXTS)
    for old, new in zip(before, after):
        assert new.ood == pytest.approx(old.ood)
        assert new.top_k == old.top_k  # the reject changes the answer, not the probabilities
        assert new.label == ("oos" if new.ood > cut else old.label)
    assert {p.label for p in after} >= {"oos"} and any(p.label != "oos" for p in after)


def test_the_router_escalates_above_max_ood_from_the_manifest(store, tmp_path):
    ood, _, _ = parameters()
    plain = signed(store, tmp_path, "plain", ood=ood)
    scores = sorted(p.ood for p in edge_runtime.load(plain, root=store).predict(TEXTS))
    cut = (scores[4] + scores[5]) / 2  # the three highest lie above it
    routing = {**json.loads((plain / "manifest.json").read_text())["routing"], "max_ood": cut}
    routing.update(min_confidence=None, min_margin=None, max_entropy=None)
    path = signed(store, tmp_path, "routed", ood=ood, manifest_updates={"routing": routing})
    model = edge_runtime.load(path, root=store)
    routed = Router(RoutingPolicy.from_dict(model.manifest.raw["routing"])).route_all(model.predict(TEXTS))
    escalated = [p for p in routed if p.decision == "escalate"]
    assert len(escalated) == 3 and all(p.ood > cut and p.reason == f"max_ood>{cut:g}" for p in escalated)
    assert all(p.reason == "confident" for p in routed if p.decision == "local")


def test_the_signature_covers_the_parameters_file(store, tmp_path):
    ood, _, _ = parameters()
    path = signed(store, tmp_path, ood=ood)
    assert "ood.npz" in json.loads((path / "manifest.json").read_text())["files"]
    stretched = OodParameters(ood.whiten * 2, ood.centers * 2, ood.location, ood.scale)
    stretched.write(path / "ood.npz")  # well-formed, other numbers: only the hash can tell
    with pytest.raises(BundleError, match="ood.npz"):
        edge_runtime.load(path, root=store)
    with pytest.raises(BundleError, match="ood.npz"):
        Store(store).install(path)


def test_a_section_must_name_a_listed_file_and_a_graph_output(store, tmp_path):
    ood, _, _ = parameters()
    section = {"file": "elsewhere.npz", "output": "pooled", "method": "mahalanobis"}
    with pytest.raises(BundleError, match="postprocess.ood.file"):
        make_bundle(
            tmp_path / "unlisted", ood=ood, manifest_updates={"postprocess": {"labels": "labels.json", "ood": section}}
        )
    # a score for a graph that has no pooled output: refused at load, not at the first request
    key = trusted_signer(store)
    path = make_bundle(tmp_path / "no-output", key, ood=ood).path
    vocab = len(json.loads((path / "tokenizer.json").read_text())["model"]["vocab"])
    (path / "model.onnx").write_bytes(onnx_classifier(vocab, 3, pooled_output=False))
    raw = json.loads((path / "manifest.json").read_text())
    bundle.finalize(path, {k: v for k, v in raw.items() if k != "files"}, private_key=key)
    with pytest.raises(BundleError, match="needs the model output 'pooled'"):
        edge_runtime.load(path, root=store)


@pytest.mark.parametrize(
    "change, error",
    [
        (lambda a: {**a, "whiten": a["whiten"].astype(np.float64)}, "whiten must be a 2-D float32"),
        (lambda a: {**a, "centers": a["centers"][:, :2]}, "do not match"),
        (lambda a: {**a, "scale": np.float64(0.0)}, "scale must be > 0"),
        (lambda a: {**a, "location": np.float64(np.nan)}, "location must be a finite"),
        (lambda a: {k: v for k, v in a.items() if k != "centers"}, "expected arrays"),
        (lambda a: {**a, "centers": np.full_like(a["centers"], np.inf)}, "NaN or infinity"),
    ],
)
def test_broken_parameters_are_refused_at_load(store, tmp_path, change, error):
    ood, _, _ = parameters()
    key = trusted_signer(store)
    path = make_bundle(tmp_path / "b", key, ood=ood).path
    arrays = dict(np.load(path / "ood.npz"))
    np.savez(path / "ood.npz", **change(arrays))
    raw = json.loads((path / "manifest.json").read_text())
    bundle.finalize(path, {k: v for k, v in raw.items() if k != "files"}, private_key=key)  # signed as it is now
    with pytest.raises(BundleError, match=error):
        edge_runtime.load(path, root=store)


def test_parameters_round_trip_through_the_file(tmp_path):
    ood, _, _ = parameters()
    ood.write(tmp_path / "ood.npz")
    back = OodParameters.read(tmp_path / "ood.npz")
    assert back.whiten.dtype == back.centers.dtype == np.float32
    assert np.array_equal(back.whiten, ood.whiten) and np.array_equal(back.centers, ood.centers)
    assert (back.location, back.scale) == (ood.location, ood.scale)
    with np.load(tmp_path / "ood.npz", allow_pickle=False) as data:  # plain arrays: nothing to unpickle
        assert sorted(data.files) == ["centers", "location", "scale", "whiten"]
