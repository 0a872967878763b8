"""Device-alone accuracy on CLINC150 val, cross-fitted: nothing fitted on the half it is scored on.

    python benchmarks/crossfit.py clinc150-minilm-int8 clinc150-minilm-l3-int8 [--json] [--data FILE]

A bundle's reject threshold (below it, the answer is "oos") is fitted on val at build time, so the val figures
in its manifest are optimistic, most of all the OOS recall (100 examples). Here val is split in two halves,
stratified by label (seeded); the threshold is fitted on one half by the build's own rule (the best OOS recall
costing at most --max-in-scope-drop points of in-scope accuracy) and scored on the other, then the halves
swap. Reported: both folds, the pooled figure (counts summed over the two scored halves) with Wilson 95%
intervals, and the bundle as shipped (its own threshold, fitted on all of val) for comparison. Logits come from
the runtime's own request path (edge_runtime.load(...).logits), batched as `edge-runtime eval` does.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATASET = Path(os.environ.get("EDGE_RUNTIME_DATASETS", REPO / "datasets")) / "clinc150"


def wilson(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a proportion, in percent."""
    if total == 0:
        return (0.0, 0.0)
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (round(100 * (centre - half), 1), round(100 * (centre + half), 1))


def halves(labels: list[str], seed: int = 0) -> np.ndarray:
    """0 or 1 for each example: every label split as evenly as it can be between the two halves."""
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(labels), dtype=int)
    for label in sorted(set(labels)):
        members = np.flatnonzero(np.asarray(labels) == label)
        rng.shuffle(members)
        fold[members[1::2]] = 1
    return fold


def counts(predicted: np.ndarray, targets: np.ndarray, oos_index: int) -> dict:
    oos = targets == oos_index
    correct = predicted == targets
    return {
        "in_scope_correct": int(correct[~oos].sum()),
        "in_scope": int((~oos).sum()),
        "oos_caught": int(correct[oos].sum()),
        "oos": int(oos.sum()),
    }


def figures(tally: dict) -> dict:
    return {
        "in_scope_accuracy": round(100 * tally["in_scope_correct"] / max(1, tally["in_scope"]), 2),
        "in_scope_interval": wilson(tally["in_scope_correct"], tally["in_scope"]),
        "oos_recall": round(100 * tally["oos_caught"] / max(1, tally["oos"]), 1),
        "oos_recall_interval": wilson(tally["oos_caught"], tally["oos"]),
        **tally,
    }


def cross_fit(logits: np.ndarray, targets: np.ndarray, labels: list[str], oos: str, max_drop: float, seed: int):
    from edge_runtime.build.evaluate import fit_reject_threshold, predict

    fold = halves([labels[t] for t in targets], seed)
    oos_index = labels.index(oos)
    folds, pooled = [], None
    for fit_on in (0, 1):
        fit, score = fold == fit_on, fold != fit_on
        threshold = fit_reject_threshold(logits[fit], targets[fit], labels, oos, max_drop)
        tally = counts(predict(logits[score], labels, oos, threshold), targets[score], oos_index)
        folds.append({"fitted_on": f"half {fit_on}", "threshold": threshold, **figures(tally)})
        pooled = tally if pooled is None else {key: pooled[key] + tally[key] for key in tally}
    return folds, figures(pooled)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+", help="classifier bundles: store names, name@version or paths")
    parser.add_argument("--data", default=str(DATASET / "val.jsonl"))
    parser.add_argument("--oos-label", default="oos")
    parser.add_argument("--max-in-scope-drop", type=float, default=0.3, help="the build's reject rule (points)")
    parser.add_argument("--seed", type=int, default=0, help="how val is split in halves")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    import edge_runtime
    from edge_runtime.build.evaluate import predict
    from edge_runtime.datasets import read_jsonl

    data = read_jsonl(Path(args.data))
    report = []
    for ref in args.bundles:
        model = edge_runtime.load(ref)
        labels = list(model.labels)
        unknown = sorted(set(data.labels) - set(labels))
        if unknown or args.oos_label not in labels:
            print(f"error: {ref} lacks labels {unknown[:5] or [args.oos_label]}", file=sys.stderr)
            return 1
        targets = np.asarray([labels.index(label) for label in data.labels])
        logits = model.logits(data.texts) / float(model.classification.temperature)
        folds, pooled = cross_fit(logits, targets, labels, args.oos_label, args.max_in_scope_drop, args.seed)
        shipped_threshold = model.post.get("reject_threshold")
        oos_index = labels.index(args.oos_label)
        shipped = figures(counts(predict(logits, labels, args.oos_label, shipped_threshold), targets, oos_index))
        report.append(
            {
                "bundle": f"{model.name}@{model.version}",
                "folds": folds,
                "cross_fitted": pooled,
                "as_shipped": {"threshold": shipped_threshold, **shipped},
            }
        )
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{'bundle':34} {'':14} {'in-scope %':>11} {'(95% CI)':>14} {'OOS recall %':>13} {'(95% CI)':>14}")
    for row in report:
        lines = [(f"fold {i + 1}", fold) for i, fold in enumerate(row["folds"])]
        lines += [("cross-fitted", row["cross_fitted"]), ("as shipped", row["as_shipped"])]
        for number, (what, f) in enumerate(lines):
            name = row["bundle"] if number == 0 else ""
            print(
                f"{name:34} {what:14} {f['in_scope_accuracy']:11.2f} {str(f['in_scope_interval']):>14} "
                f"{f['oos_recall']:13.1f} {str(f['oos_recall_interval']):>14}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
