"""The onnxruntime optimised-graph cache is never trusted over the verified model: a cached graph that is
altered (garbage, or another valid graph) or does not load is thrown away and rebuilt from the verified
model. Real bundles (support.bundle_factory), real files, real onnxruntime sessions."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

import edge_runtime
from edge_runtime import paths

from support import bundle_factory

TEXTS = ["what is my account balance", "play some jazz music", "book a table for two tonight"]


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "home"
    key = bundle_factory.trusted_signer(root)
    bundle_factory.make_bundle(root / "tiny", key)
    return root


def cached(root) -> tuple:
    graphs = sorted(paths.cache_dir(root).glob("*.onnx"))
    assert len(graphs) == 1, graphs
    return graphs[0], sorted(paths.cache_dir(root).glob("*.sha256"))


def reference_logits(root) -> np.ndarray:
    return edge_runtime.load(root / "tiny", root=root, use_cache=False).logits(TEXTS)


def test_the_cache_is_written_with_its_hash_and_used(store):
    first = edge_runtime.load(store / "tiny", root=store).logits(TEXTS)
    graph, digests = cached(store)
    assert [d.read_text().strip() for d in digests] == [hashlib.sha256(graph.read_bytes()).hexdigest()]
    assert not list(paths.cache_dir(store).glob("*.tmp")) and not list(paths.cache_dir(store).glob(".*"))
    again = edge_runtime.load(store / "tiny", root=store).logits(TEXTS)
    np.testing.assert_allclose(again, first, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("damage", ["garbage", "another_valid_graph", "truncated"])
def test_a_damaged_cache_is_replaced_and_the_verified_model_answers(store, damage):
    edge_runtime.load(store / "tiny", root=store)
    graph, _ = cached(store)
    good = graph.read_bytes()
    if damage == "garbage":
        graph.write_bytes(b"\x00not a graph" * 100)
    elif damage == "truncated":
        graph.write_bytes(good[: len(good) // 2])
    else:  # loads fine and answers differently: only the hash can tell
        graph.write_bytes(
            bundle_factory.onnx_classifier(bundle_factory._vocab_size(store / "tiny" / "tokenizer.json"), 3, 7)
        )
    model = edge_runtime.load(store / "tiny", root=store)
    np.testing.assert_allclose(model.logits(TEXTS), reference_logits(store), rtol=1e-5, atol=1e-6)
    graph, digests = cached(store)
    assert hashlib.sha256(graph.read_bytes()).hexdigest() == digests[0].read_text().strip()  # rebuilt


def test_a_cache_that_matches_its_hash_but_does_not_load_falls_back_to_the_verified_model(store):
    edge_runtime.load(store / "tiny", root=store)
    graph, digests = cached(store)
    broken = b"\x08\x07\x12\x04junk" * 50  # hashes fine (the sidecar is rewritten to match), will not parse
    graph.write_bytes(broken)
    digests[0].write_text(hashlib.sha256(broken).hexdigest() + "\n")
    model = edge_runtime.load(store / "tiny", root=store)
    np.testing.assert_allclose(model.logits(TEXTS), reference_logits(store), rtol=1e-5, atol=1e-6)
    graph, _ = cached(store)
    assert graph.read_bytes() != broken
