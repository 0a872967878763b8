"""Model outputs -> answers: predictions, embeddings, entity spans. The arithmetic is in the kernels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from . import kernels
from .results import Entity, Prediction


@dataclass
class ClassificationSettings:
    labels: list[str]
    temperature: float = 1.0
    top_k: int = 5
    reject_threshold: float | None = None  # below this max probability the answer is reject_label
    reject_label: str | None = None
    ood_reject_threshold: float | None = None  # above this out-of-scope score the answer is reject_label too
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_manifest(cls, postprocess: dict, labels: list[str]) -> ClassificationSettings:
        from .ood import reject_threshold as ood_reject_threshold

        reject_label = postprocess.get("reject_label")
        threshold = postprocess.get("reject_threshold")
        ood_threshold = ood_reject_threshold(postprocess.get("ood"))
        return cls(
            labels=labels,
            temperature=float(postprocess.get("temperature", 1.0) or 1.0),
            top_k=min(int(postprocess.get("top_k", 5) or 5), 5, len(labels)),
            reject_threshold=float(threshold) if threshold is not None and reject_label in labels else None,
            reject_label=reject_label if reject_label in labels else None,
            ood_reject_threshold=ood_threshold if reject_label in labels else None,
        )


def classify(
    logits: np.ndarray, settings: ClassificationSettings, top_k: int | None = None, ood: np.ndarray | None = None
) -> list[Prediction]:
    """Predictions for logits (B, C); `ood` (B,), the bundle's out-of-scope scores when it has them."""
    k = min(top_k or settings.top_k, 5, len(settings.labels))
    result = kernels.classify.classify_logits(
        np.ascontiguousarray(logits, dtype=np.float32), settings.temperature, k, False
    )
    labels = settings.labels
    predictions = []
    for row in range(result.argmax.shape[0]):
        score = float(result.max_prob[row])
        label = labels[int(result.argmax[row])]
        far = float(ood[row]) if ood is not None else None
        if _rejected(score, far, settings):
            label = settings.reject_label
        predictions.append(
            Prediction(
                label=label,
                score=score,
                top_k=[(labels[int(i)], float(p)) for i, p in zip(result.top_indices[row], result.top_probs[row])],
                margin=float(result.margin[row]),
                entropy=float(result.entropy[row]),
                ood=far,
            )
        )
    return predictions


def _rejected(score: float, ood: float | None, settings: ClassificationSettings) -> bool:
    """Answer the reject label: too unsure (max probability) or too far from every class (ood score)."""
    if settings.reject_threshold is not None and score < settings.reject_threshold:
        return True
    return ood is not None and settings.ood_reject_threshold is not None and ood > settings.ood_reject_threshold


def embed(hidden: np.ndarray, attention_mask: np.ndarray, pooling: str = "mean", normalize: bool = True) -> np.ndarray:
    hidden = np.ascontiguousarray(hidden, dtype=np.float32)
    if pooling == "cls":
        return kernels.pooling.cls_pool(hidden, normalize)
    return kernels.pooling.mean_pool(hidden, attention_mask, normalize)


def entities(
    logits: np.ndarray,
    offsets: np.ndarray,
    word_ids: np.ndarray,
    labels: Sequence[str],
    strategy: str = "simple",
    scheme: str = "IOB2",
    outside_bias: float = 0.0,
) -> list[list[Entity]]:
    """Entity spans; `outside_bias` > 0 is taken off the "O" logit first, so borderline tokens count as
    entities (a PII tagger would rather redact one word too many than leak a name)."""
    logits = np.array(logits, dtype=np.float32) if outside_bias else np.ascontiguousarray(logits, dtype=np.float32)
    if outside_bias and "O" in labels:
        logits[..., list(labels).index("O")] -= outside_bias
    rows = kernels.tokencls.decode_entities(logits, offsets, word_ids, list(labels), strategy, scheme)
    return [[Entity(*entity) for entity in row] for row in rows]
