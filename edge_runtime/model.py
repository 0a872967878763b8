"""`load()` a bundle and run it: preprocess -> session -> postprocess.

Routing (local or escalate) is the router's job (edge_runtime.router); `Model.predict` returns the
local answer with its confidence figures.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import postprocess
from .bundle import TASKS
from .errors import BundleError, InputError, StoreError
from .ood import OodScorer
from .paths import cache_dir
from .preprocess import Preprocessor, token_positions
from .results import Entity, Prediction
from .session import Session, SessionSettings


class Model:
    """A verified bundle with its onnxruntime session. Thread-safe for concurrent predict calls."""

    def __init__(self, path: Path, manifest, settings: SessionSettings, max_batch: int = 32, max_tokens: int = 4096):
        self.path = Path(path)
        self.manifest = manifest
        raw = manifest.raw
        self.name, self.version, self.task = raw["name"], raw["version"], raw["task"]
        if self.task not in TASKS:
            raise BundleError(f"{self.name} {self.version}: unsupported task {self.task!r}")
        pre = raw.get("preprocess", {})
        self.preprocessor = Preprocessor(
            self.path / pre.get("tokenizer", "tokenizer.json"),
            max_length=int(pre.get("max_length", 128)),
            pad_id=int(pre.get("pad_id", 0)),
            token_type_ids="token_type_ids" in raw.get("model", {}).get("inputs", ["token_type_ids"]),
            case_feature=bool(pre.get("case_feature", False)),
        )
        model_file = raw.get("model", {}).get("file", "model.onnx")
        digest = raw.get("files", {}).get(model_file, {}).get("sha256")
        self.session = Session(self.path / model_file, settings, model_sha256=digest)
        post = raw.get("postprocess", {})
        self.post = post
        self.labels: list[str] = []
        labels_file = post.get("labels")
        if labels_file:
            self.labels = json.loads((self.path / labels_file).read_text(encoding="utf-8"))
        self.classification = (
            postprocess.ClassificationSettings.from_manifest(post, self.labels)
            if self.task == "text-classification"
            else None
        )
        # The out-of-scope score, when the bundle ships one (edge_runtime/ood.py); the session then returns the
        # logits and the pooled embedding, and nothing else.
        self.ood = (
            OodScorer.from_manifest(self.path, post.get("ood"), self.session.output_names)
            if self.task == "text-classification"
            else None
        )
        self._classifier_outputs = [self.session.output_names[0], self.ood.output] if self.ood else None
        self.max_batch = max_batch
        self.max_tokens = max_tokens

    def __repr__(self) -> str:
        return f"<Model {self.name} {self.version} ({self.task}) from {self.path}>"

    # -- the request path -------------------------------------------------------------------

    def _forward(self, texts: Sequence[str], outputs: list[str] | None = None):
        """Run the session over texts in length buckets; yields (row indices, outputs, batch). `outputs`: the
        graph outputs to fetch, in order (None: all of them)."""
        if isinstance(texts, str):
            raise InputError("expected a list of texts, got one string")
        encodings = self.preprocessor.encode(texts)
        if len(encodings) <= self.max_batch:
            batch = self.preprocessor.tensors(encodings, texts)
            yield np.arange(len(encodings)), self.session.run(batch.tensors, outputs), batch
            return
        order, boundaries, _ = self.preprocessor.buckets(encodings, self.max_batch, self.max_tokens)
        for start, end in zip(boundaries[:-1], boundaries[1:]):
            rows = order[start:end]
            batch = self.preprocessor.tensors([encodings[i] for i in rows], [texts[i] for i in rows])
            yield rows, self.session.run(batch.tensors, outputs), batch

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        return self.logits_and_ood(texts)[0]

    def logits_and_ood(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits (N, C) and, when the bundle ships an out-of-scope score, the scores (N,) from the same run."""
        self._require("text-classification")
        out, far = None, None
        for rows, outputs, _ in self._forward(texts, self._classifier_outputs):
            if out is None:
                out = np.empty((len(texts), outputs[0].shape[1]), dtype=np.float32)
                far = np.empty(len(texts), dtype=np.float32) if self.ood else None
            out[rows] = outputs[0]
            if self.ood:
                far[rows] = self.ood.scores(outputs[1])
        if out is None:
            return np.empty((0, len(self.labels)), dtype=np.float32), np.empty(0, np.float32) if self.ood else None
        return out, far

    def pooled(self, texts: Sequence[str]) -> np.ndarray:
        """The pooled embeddings (N, d) a classifier's head reads, from its graph's `pooled` output (bundles built
        with the out-of-scope score have it): what the score measures, for analysis and benchmarks."""
        self._require("text-classification")
        name = self.ood.output if self.ood else "pooled"
        if name not in self.session.output_names:
            raise InputError(f"{self.name} {self.version} has no {name!r} output (built before the out-of-scope score)")
        out = None
        for rows, (vectors,), _ in self._forward(texts, [name]):
            if out is None:
                out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
            out[rows] = vectors
        return out if out is not None else np.empty((0, 0), dtype=np.float32)

    def predict(self, texts: Sequence[str], top_k: int | None = None) -> list[Prediction]:
        self._require("text-classification")
        started = time.perf_counter()
        predictions: list[Prediction | None] = [None] * len(texts)
        for rows, outputs, _ in self._forward(texts, self._classifier_outputs):
            far = self.ood.scores(outputs[1]) if self.ood else None
            for row, prediction in zip(rows, postprocess.classify(outputs[0], self.classification, top_k, far)):
                predictions[row] = prediction
        latency = (time.perf_counter() - started) * 1000.0
        for prediction in predictions:
            prediction.latency_ms = latency
        return predictions

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self._require("feature-extraction")
        pooling = self.post.get("pooling", "mean")
        normalize = bool(self.post.get("normalize", True))
        out = None
        for rows, outputs, batch in self._forward(texts):
            vectors = postprocess.embed(outputs[0], batch.tensors["attention_mask"], pooling, normalize)
            if out is None:
                out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
            out[rows] = vectors
        return out if out is not None else np.empty((0, 0), dtype=np.float32)

    def entities(self, texts: Sequence[str], strategy: str | None = None) -> list[list[Entity]]:
        self._require("token-classification")
        encodings = self.preprocessor.encode(texts)
        batch = self.preprocessor.tensors(encodings, texts)
        (logits,) = self.session.run(batch.tensors)
        offsets, word_ids = token_positions(encodings, logits.shape[1])
        return postprocess.entities(
            logits,
            offsets,
            word_ids,
            self.labels,
            strategy or self.post.get("aggregation", "simple"),
            self.post.get("scheme", "IOB2"),
            float(self.post.get("outside_bias", 0.0)),
        )

    def _require(self, task: str) -> None:
        if self.task != task:
            raise InputError(f"{self.name} is a {self.task} model, not {task}")


def load(
    ref: str | Path | None = None,
    *,
    root: Path | None = None,
    allow_unsigned: bool = False,
    threads: int = 0,
    max_batch: int = 32,
    use_cache: bool = True,
) -> Model:
    """Load a bundle: a directory or .erb archive path, a store name, name@version, or (None) the active model.

    The bundle's hashes and signature are verified against the store's trusted keys first.
    """
    from .store import Store

    store = Store(root)
    if ref is None and store.active() is None:
        raise StoreError("no active model: run `edge-runtime build default` or `edge-runtime models install`")
    path = store.resolve(ref, allow_unsigned)
    manifest = store.verify(path, allow_unsigned=allow_unsigned)
    settings = SessionSettings(threads=threads, cache_dir=cache_dir(store.root) if use_cache else None)
    return Model(path, manifest, settings, max_batch=max_batch)
