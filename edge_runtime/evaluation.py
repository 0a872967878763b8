"""Accuracy figures for intent classification with an out-of-scope label (CLINC150 style).

in_scope_accuracy: accuracy on examples whose gold label is not the OOS label.
oos_recall:        share of OOS examples predicted as OOS.
kept_accuracy:     accuracy of the answers kept on the device (decision local).
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import InputError


def _share(hits: int, total: int) -> float | None:
    return hits / total if total else None


def accuracy_figures(gold: Sequence[str], predicted: Sequence[str], oos_label: str = "oos") -> dict:
    pairs = list(zip(gold, predicted))
    in_scope = [(g, p) for g, p in pairs if g != oos_label]
    oos = [(g, p) for g, p in pairs if g == oos_label]
    return {
        "n": len(pairs),
        "accuracy": _share(sum(g == p for g, p in pairs), len(pairs)),
        "in_scope_accuracy": _share(sum(g == p for g, p in in_scope), len(in_scope)),
        "oos_recall": _share(sum(p == oos_label for _, p in oos), len(oos)),
    }


def per_class(gold: Sequence[str], predicted: Sequence[str]) -> dict[str, dict]:
    labels = sorted(set(gold) | set(predicted))
    report = {}
    for label in labels:
        tp = sum(g == label and p == label for g, p in zip(gold, predicted))
        fp = sum(g != label and p == label for g, p in zip(gold, predicted))
        fn = sum(g == label and p != label for g, p in zip(gold, predicted))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        report[label] = {"precision": precision, "recall": recall, "f1": f1, "support": tp + fn}
    return report


def routed_figures(
    gold: Sequence[str],
    local: Sequence[str],
    escalated: Sequence[bool],
    final: Sequence[str] | None = None,
    oos_label: str = "oos",
) -> dict:
    """Figures of a routed run: what stayed local, what went upstream, and the end result."""
    kept = [(g, p) for g, p, e in zip(gold, local, escalated) if not e]
    sent = [(g, p) for g, p, e in zip(gold, local, escalated) if e]
    figures = accuracy_figures(gold, final if final is not None else local, oos_label)
    figures.update(
        {
            "escalation_rate": _share(len(sent), len(gold)) or 0.0,
            "local_share": _share(len(kept), len(gold)) or 0.0,
            "kept_accuracy": _share(sum(g == p for g, p in kept), len(kept)),
            "escalated_local_accuracy": _share(sum(g == p for g, p in sent), len(sent)),
        }
    )
    if final is not None:
        finals = [(g, f) for g, f, e in zip(gold, final, escalated) if e]
        figures["escalated_accuracy"] = _share(sum(g == f for g, f in finals), len(finals))
    return figures


# --- the hybrid: device + upstream -----------------------------------------------------------------
# Default prices per request, in USD: the device's marginal cost (energy for ~10 ms of one CPU core,
# amortised hardware excluded) and a hosted upstream call (a small model behind an API, with network).
DEFAULT_DEVICE_COST = 0.000002
DEFAULT_UPSTREAM_COST = 0.0004


def outgoing(egress, texts: Sequence[str], reasons: Sequence[str]) -> list[str | None]:
    """Each text as it would leave the device through `egress` (redacted), or None where it would stay
    (a privacy refusal, or the required PII tagger missing): what an upstream actually gets to read."""
    from . import escalation
    from .egress import PrivacyUnavailable
    from .redaction import PrivacyRefused

    sent: list[str | None] = []
    for text, reason in zip(texts, reasons):
        request_id = escalation.new_request_id()
        try:
            sent.append(egress.prepare(request_id, text, reason))
        except (PrivacyRefused, PrivacyUnavailable):
            sent.append(None)
        egress.forget(request_id)
    return sent


def payload_sizes(
    redacted: Sequence[str],
    predictions: Sequence | None,
    *,
    bundle: tuple[str, str] = ("", ""),
    device_id: str = "eval-device",
) -> list[int]:
    """Bytes of each escalation request as it leaves the device: the `redacted` text, serialised
    (escalation.encode). `predictions` None: requests without a device prediction (everything sent upstream)."""
    from . import escalation

    sizes = []
    for i, text in enumerate(redacted):
        prediction = predictions[i] if predictions is not None else None
        reason = getattr(prediction, "reason", "") if prediction is not None else "all_upstream"
        message = escalation.build_request(
            text, prediction, device_id=device_id, request_id=escalation.new_request_id(), reason=reason, bundle=bundle
        )
        sizes.append(len(escalation.encode(message)))
    return sizes


def cost_per_1000(escalation_rate: float, device_cost: float, upstream_cost: float, *, on_device: bool = True) -> float:
    """Every request runs on the device (when on_device); the escalated share also pays the upstream price."""
    return 1000.0 * ((device_cost if on_device else 0.0) + escalation_rate * upstream_cost)


def hybrid_figures(
    gold: Sequence[str],
    local: Sequence[str],
    escalated: Sequence[bool],
    upstream: Sequence[str],
    *,
    escalated_bytes: int,
    all_bytes: int,
    device_cost: float = DEFAULT_DEVICE_COST,
    upstream_cost: float = DEFAULT_UPSTREAM_COST,
    oos_label: str = "oos",
) -> dict:
    """Device + upstream against device alone and everything upstream.

    `upstream` holds the upstream's answer for every example (so "everything upstream" can be scored);
    the hybrid takes it for the escalated ones only."""
    final = [up if sent else here for here, up, sent in zip(local, upstream, escalated)]
    figures = routed_figures(gold, local, escalated, final, oos_label)
    n, sent = len(gold), sum(bool(e) for e in escalated)
    figures.update(
        {
            "upstream_bytes": escalated_bytes,
            "upstream_bytes_per_1000": 1000.0 * escalated_bytes / n if n else 0.0,
            "cost_per_1000": cost_per_1000(figures["escalation_rate"], device_cost, upstream_cost),
            "prices": {"device": device_cost, "upstream": upstream_cost},
            "device_only": accuracy_figures(gold, local, oos_label),
            "all_upstream": {
                **accuracy_figures(gold, upstream, oos_label),
                "upstream_bytes": all_bytes,
                "upstream_bytes_per_1000": 1000.0 * all_bytes / n if n else 0.0,
                "cost_per_1000": cost_per_1000(1.0, device_cost, upstream_cost, on_device=False),
            },
            "escalated": sent,
        }
    )
    return figures


def candidate_labels(big, texts: Sequence[str], predictions: Sequence, oos_label: str = "oos") -> list[str]:
    """The upstream's answer restricted to the device's top-k labels plus the OOS label (the top-k travel
    with every escalation request). The upstream's own reject threshold still turns weak answers into OOS."""
    from .calibration import softmax

    index = {label: i for i, label in enumerate(big.labels)}
    logits = big.logits(texts)
    probs = softmax(logits, big.classification.temperature)
    reject = big.classification.reject_threshold
    answers = []
    for row, prediction in zip(probs, predictions):
        allowed = [index[label] for label, _ in prediction.top_k if label in index]
        if oos_label in index:
            allowed.append(index[oos_label])
        if not allowed:
            allowed = list(range(len(big.labels)))
        best = max(allowed, key=lambda i: row[i])
        if reject is not None and float(row.max()) < reject and big.classification.reject_label:
            answers.append(big.classification.reject_label)
        else:
            answers.append(big.labels[best])
    return answers


def upstream_labels(big, texts: Sequence[str], predictions: Sequence, mode: str) -> list[str]:
    """What the upstream `big` answers for each text: `plain` its own label, `candidates` a pick among the
    device's top-k and the OOS label, `combined` its probabilities pooled with the device's top-k."""
    if mode == "plain":
        return [p.label for p in big.predict(texts)]
    if mode == "combined":
        from .combine import Combination, combine_many

        combination = Combination.from_manifest(big.manifest.raw)
        if combination is None:
            raise InputError(
                f"{big.name}@{big.version} has no postprocess.combine section: fit one with "
                f"`edge-runtime calibrate --bundle {big.name}@{big.version} --device DEVICE --data VAL.jsonl --out DIR`"
            )
        answers, _ = combine_many(combination, [p.top_k for p in predictions], big.logits(texts), big.labels)
        return answers
    return candidate_labels(big, texts, predictions)


def hybrid_evaluation(
    model,
    big,
    texts: Sequence[str],
    gold: Sequence[str],
    predictions: Sequence,
    mode: str = "plain",
    oos_label: str = "oos",
    device_cost: float = DEFAULT_DEVICE_COST,
    upstream_cost: float = DEFAULT_UPSTREAM_COST,
    egress=None,
) -> tuple[dict, list[str]]:
    """(figures, final labels) of the device `model` (its routed `predictions`) with the upstream `big`
    answering what it escalates, against the device alone and everything upstream.

    The upstream reads what would leave the device: each text through `egress` (the device's redaction,
    its PII tagger included; default: the scanner alone), so over-redaction costs accuracy here as it
    would in the field. A text that egress keeps on the device (privacy refusal, tagger unavailable) is
    answered locally, as the pipeline would."""
    from .egress import Egress

    egress = egress or Egress()
    redacted = outgoing(egress, texts, [p.reason for p in predictions])
    wanted = [p.decision == "escalate" for p in predictions]
    escalated = [w and r is not None for w, r in zip(wanted, redacted)]
    readable = [r if r is not None else t for r, t in zip(redacted, texts)]  # all-upstream: kept ones unsent
    upstream = upstream_labels(big, readable, predictions, mode)
    bundle = (model.name, model.version)
    sent = [i for i, e in enumerate(escalated) if e]
    escalated_bytes = sum(payload_sizes([redacted[i] for i in sent], [predictions[i] for i in sent], bundle=bundle))
    all_bytes = sum(payload_sizes(readable, None, bundle=bundle))
    figures = hybrid_figures(
        gold,
        [p.label for p in predictions],
        escalated,
        upstream,
        escalated_bytes=escalated_bytes,
        all_bytes=all_bytes,
        device_cost=device_cost,
        upstream_cost=upstream_cost,
        oos_label=oos_label,
    )
    figures["upstream"] = f"{big.name}@{big.version}"
    figures["upstream_mode"] = mode
    figures["redaction"] = {
        "tagger": egress.tagger.name if egress.tagger else None,
        "texts_changed": sum(r is not None and r != t for r, t in zip(redacted, texts)),
        "kept_local_for_privacy": sum(w and r is None for w, r in zip(wanted, redacted)),
    }
    final = [u if e else p.label for p, u, e in zip(predictions, upstream, escalated)]
    return figures, final
