"""Device-alone accuracy on CLINC150 val, cross-fitted: nothing fitted on the half it is scored on.

    python benchmarks/crossfit.py clinc150-minilm-int8 clinc150-minilm-l3-int8 [--json] [--data FILE]
    python benchmarks/crossfit.py clinc150-minilm-int8@1.1.0 --signal ood --signal both --max-in-scope-drop 0.3 1

A bundle's reject threshold (below it, the answer is "oos") is fitted on val at build time, so the val figures
in its manifest are optimistic, most of all the OOS recall (100 examples). Here val is split in two halves,
stratified by label (seeded); the reject rule is fitted on one half by the build's own rule (the best OOS recall
costing at most --max-in-scope-drop points of in-scope accuracy) and scored on the other, then the halves
swap. Reported: both folds, the pooled figure (counts summed over the two scored halves) with Wilson 95%
intervals, and the bundle as shipped (its own thresholds, fitted on all of val) for comparison. Logits and
out-of-scope scores come from the runtime's own request path (edge_runtime.load(...).logits_and_ood), batched
as `edge-runtime eval` does, on --threads onnxruntime threads.

Signals (--signal, repeatable; default: every one the bundle has):
  confidence  the top probability after the bundle's temperature (the build's fit_reject_threshold)
  ood         the out-of-scope score of the pooled embedding, for bundles that ship one
              (edge_runtime/ood.py; fitted by calibration.ood_reject_threshold)
  both        either one rejects, the two cuts fitted together (calibration.joint_reject_thresholds)
The halves and the fits are the build's own (edge_runtime/build/reject.py).
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
SIGNALS = ("confidence", "ood", "both")  # edge_runtime/build/reject.py


def wilson(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a proportion, in percent."""
    if total == 0:
        return (0.0, 0.0)
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (round(100 * (centre - half), 1), round(100 * (centre + half), 1))


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


def spread(pooled: list[dict]) -> dict:
    """Mean, min and max of the pooled figures over several half splits."""
    return {
        key: {
            "mean": round(float(np.mean([p[key] for p in pooled])), 2),
            "min": min(p[key] for p in pooled),
            "max": max(p[key] for p in pooled),
        }
        for key in ("in_scope_accuracy", "oos_recall")
    }


def cross_fit(
    logits: np.ndarray,
    targets: np.ndarray,
    labels: list[str],
    oos: str,
    max_drop: float,
    seed: int,
    signal: str = "confidence",
    ood: np.ndarray | None = None,
):
    from edge_runtime.build.evaluate import predict
    from edge_runtime.build.reject import fit, halves

    fold = halves([labels[t] for t in targets], seed)
    oos_index = labels.index(oos)
    folds, pooled = [], None
    for fit_on in (0, 1):
        part, score = fold == fit_on, fold != fit_on
        far = ood[part] if ood is not None else None
        threshold, ood_threshold = fit(signal, logits[part], far, targets[part], labels, oos, max_drop)
        far = ood[score] if ood is not None else None
        tally = counts(predict(logits[score], labels, oos, threshold, far, ood_threshold), targets[score], oos_index)
        cuts = {"threshold": threshold, "ood_threshold": ood_threshold}
        folds.append({"fitted_on": f"half {fit_on}", **cuts, **figures(tally)})
        pooled = tally if pooled is None else {key: pooled[key] + tally[key] for key in tally}
    return folds, figures(pooled)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+", help="classifier bundles: store names, name@version or paths")
    parser.add_argument("--data", default=str(DATASET / "val.jsonl"))
    parser.add_argument("--oos-label", default="oos")
    parser.add_argument(
        "--max-in-scope-drop",
        type=float,
        nargs="+",
        default=[0.3],
        help="the build's reject rule (points); several values give several operating points",
    )
    parser.add_argument("--signal", action="append", choices=SIGNALS, help="default: every one the bundle has")
    parser.add_argument(
        "--seed",
        type=int,
        nargs="+",
        default=[0],
        help="how val is split in halves; several seeds: one cross-fit per split, and their spread",
    )
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    import edge_runtime
    from edge_runtime.build.evaluate import predict
    from edge_runtime.datasets import read_jsonl

    data = read_jsonl(Path(args.data))
    report = []
    for ref in args.bundles:
        model = edge_runtime.load(ref, threads=args.threads)
        labels = list(model.labels)
        unknown = sorted(set(data.labels) - set(labels))
        if unknown or args.oos_label not in labels:
            print(f"error: {ref} lacks labels {unknown[:5] or [args.oos_label]}", file=sys.stderr)
            return 1
        targets = np.asarray([labels.index(label) for label in data.labels])
        logits, ood = model.logits_and_ood(data.texts)
        logits = logits / float(model.classification.temperature)
        signals = args.signal or [signal for signal in SIGNALS if signal == "confidence" or ood is not None]
        if ood is None and set(signals) - {"confidence"}:
            print(f"error: {ref} ships no out-of-scope score (signals ood and both need one)", file=sys.stderr)
            return 1
        shipped_cuts = {
            "threshold": model.classification.reject_threshold,
            "ood_threshold": model.classification.ood_reject_threshold,
        }
        oos_index = labels.index(args.oos_label)
        shipped = figures(counts(predict(logits, labels, args.oos_label, ood=ood, **shipped_cuts), targets, oos_index))
        for signal in signals:
            for max_drop in args.max_in_scope_drop:
                runs = [
                    cross_fit(logits, targets, labels, args.oos_label, max_drop, seed, signal, ood)
                    for seed in args.seed
                ]
                folds, pooled = runs[0]
                row = {
                    "bundle": f"{model.name}@{model.version}",
                    "signal": signal,
                    "max_in_scope_drop": max_drop,
                    "seed": args.seed[0],
                    "folds": folds,
                    "cross_fitted": pooled,
                    "as_shipped": {**shipped_cuts, **shipped},
                }
                if len(runs) > 1:
                    row["seeds"] = [{"seed": seed, **run[1]} for seed, run in zip(args.seed, runs)]
                    row["over_seeds"] = spread([run[1] for run in runs])
                report.append(row)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for row in report:
        if "over_seeds" in row:
            s = row["over_seeds"]
            print(
                f"{row['bundle']} {row['signal']} drop {row['max_in_scope_drop']:g}, {len(row['seeds'])} splits: "
                f"in-scope {s['in_scope_accuracy']['mean']:.2f} ({s['in_scope_accuracy']['min']:.2f}-"
                f"{s['in_scope_accuracy']['max']:.2f}), OOS recall {s['oos_recall']['mean']:.1f} "
                f"({s['oos_recall']['min']:.1f}-{s['oos_recall']['max']:.1f})"
            )
    header = f"{'bundle':30} {'signal':10} {'drop':>4} {'':13} {'in-scope %':>10} {'(95% CI)':>14}"
    print(f"{header} {'OOS recall %':>12} {'(95% CI)':>14}")
    for row in report:
        lines = [(f"fold {i + 1}", fold) for i, fold in enumerate(row["folds"])]
        lines += [("cross-fitted", row["cross_fitted"])]
        lines += [(f"seed {run['seed']}", run) for run in row.get("seeds", [])[1:]]
        lines += [("as shipped", row["as_shipped"])]
        for number, (what, f) in enumerate(lines):
            first = number == 0
            name, signal = (row["bundle"], row["signal"]) if first else ("", "")
            drop = f"{row['max_in_scope_drop']:g}" if first else ""
            print(
                f"{name:30} {signal:10} {drop:>4} {what:13} {f['in_scope_accuracy']:10.2f} "
                f"{str(f['in_scope_interval']):>14} {f['oos_recall']:12.1f} {str(f['oos_recall_interval']):>14}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
