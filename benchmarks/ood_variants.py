"""Which out-of-scope score: distance variants on a bundle's pooled embeddings, measured on CLINC150 val.

    python benchmarks/ood_variants.py [clinc150-minilm-int8] [--json] [--threads 1]

Every variant is fitted on the pooled embeddings of the in-scope training texts (CLINC150 train, the bundle's
own INT8 model, through the runtime) and scored on val; nothing here reads the test split. Variants:

  softmax            1 - the top probability (what the reject threshold uses without the score)
  mahalanobis        distance to the nearest class mean, one covariance for all classes (Lee et al. 2018),
                     shrunk by Ledoit-Wolf (build/ood.py: what the build ships) or by a fixed share
  relative           mahalanobis minus the distance to the mean of all training texts under their own
                     (shrunk) covariance (Ren et al. 2021)
  knn k=K            1 - the cosine similarity of the K-th nearest L2-normalised training text (Sun et al. 2022)

Reported per variant: AUROC and the in-scope false-positive rate at 95% OOS recall on all of val (val in-scope vs
val OOS: in-sample for nothing but the choice of variant), and the device's cross-fitted operating points with the
reject cut fitted on one half of val and scored on the other (benchmarks/crossfit.py's halves and rule) at each
--max-in-scope-drop, pooled, with Wilson intervals. Also each variant's time per query at batch 1 in this run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from crossfit import DATASET, counts, figures  # benchmarks/crossfit.py


def shrunk(centered: np.ndarray, share: float | None) -> tuple[np.ndarray, float]:
    """Covariance of centred rows shrunk towards a multiple of the identity: by Ledoit-Wolf when share is None."""
    from sklearn.covariance import ledoit_wolf

    if share is None:
        covariance, share = ledoit_wolf(centered, assume_centered=True)
        return covariance, float(share)
    sample = centered.T @ centered / len(centered)
    target = np.trace(sample) / len(sample) * np.eye(len(sample))
    return (1 - share) * sample + share * target, share


def whiten(covariance: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(covariance)
    return vectors / np.sqrt(values)


def mahalanobis(train, targets, share=None, relative=False):
    """A scorer: pooled (N, d) -> distances (N,), fitted on the training rows."""
    classes = np.unique(targets)
    means = np.stack([train[targets == c].mean(axis=0) for c in classes])
    covariance, _ = shrunk(train - means[np.searchsorted(classes, targets)], share)
    w = whiten(covariance)
    centers = means @ w
    center_norms = (centers**2).sum(axis=1)
    if relative:
        overall = train.mean(axis=0)
        w0 = whiten(shrunk(train - overall, share)[0])

    def score(pooled):
        z = pooled @ w
        d = ((z**2).sum(axis=1)[:, None] - 2 * z @ centers.T + center_norms[None]).min(axis=1)
        if relative:
            d = d - (((pooled - overall) @ w0) ** 2).sum(axis=1)
        return d

    return score


def knn(train, k: int):
    unit = train / np.linalg.norm(train, axis=1, keepdims=True)

    def score(pooled):
        queries = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
        similarity = queries @ unit.T
        return -np.partition(similarity, -k, axis=1)[:, -k]

    return score


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    from edge_runtime.build.ood import auroc as area

    return area(scores, positive)


def fpr_at_95(scores: np.ndarray, positive: np.ndarray) -> float:
    """Share of in-scope texts scored at least as high as the cut that keeps 95% of the OOS texts above it."""
    cut = np.quantile(scores[positive], 0.05)
    return float((scores[~positive] >= cut).mean())


def cross_fitted(scores, argmax, targets, oos_index, labels, max_drop, seed=0) -> dict:
    from edge_runtime.build.reject import halves
    from edge_runtime.calibration import ood_reject_threshold

    fold = halves([labels[t] for t in targets], seed)
    pooled, folds = None, []
    for fit_on in (0, 1):
        fit, held = fold == fit_on, fold != fit_on
        cut = ood_reject_threshold(scores[fit], argmax[fit], targets[fit], oos_index, max_drop / 100)
        predicted = np.where(scores[held] > cut, oos_index, argmax[held]) if cut is not None else argmax[held]
        tally = counts(predicted, targets[held], oos_index)
        folds.append(figures(tally))
        pooled = tally if pooled is None else {key: pooled[key] + tally[key] for key in tally}
    return {"folds": folds, "pooled": figures(pooled)}


def per_query_us(score, pooled: np.ndarray, repeats: int = 200) -> float:
    rows = [pooled[i : i + 1] for i in range(min(repeats, len(pooled)))]
    score(rows[0])
    started = time.perf_counter()
    for row in rows:
        score(row)
    return (time.perf_counter() - started) / len(rows) * 1e6


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", nargs="?", default="clinc150-minilm-int8", help="store name, name@version or path")
    parser.add_argument("--train", default=str(DATASET / "train.jsonl"))
    parser.add_argument("--val", default=str(DATASET / "val.jsonl"))
    parser.add_argument("--oos-label", default="oos")
    parser.add_argument("--max-in-scope-drop", type=float, nargs="+", default=[0.3, 1.0])
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    import edge_runtime
    from edge_runtime.build.evaluate import softmax
    from edge_runtime.datasets import read_jsonl

    model = edge_runtime.load(args.bundle, threads=args.threads)
    labels = list(model.labels)
    oos_index = labels.index(args.oos_label)
    train, val = read_jsonl(Path(args.train)), read_jsonl(Path(args.val))
    y_train = np.array([labels.index(label) for label in train.labels])
    y_val = np.array([labels.index(label) for label in val.labels])
    in_scope = y_train != oos_index
    x_train = model.pooled(train.texts).astype(np.float64)[in_scope]
    t_train = y_train[in_scope]
    x_val = model.pooled(val.texts).astype(np.float64)
    logits, shipped = model.logits_and_ood(val.texts)
    argmax, positive = logits.argmax(axis=1), y_val == oos_index

    variants = {"softmax": lambda _pooled: 1.0 - softmax(logits.astype(np.float64)).max(axis=1)}
    if shipped is not None:
        variants["shipped score (ood.npz, kernel)"] = lambda _pooled: shipped.astype(np.float64)
    variants["mahalanobis, Ledoit-Wolf"] = mahalanobis(x_train, t_train)
    for share in (0.0, 0.1, 0.3):
        variants[f"mahalanobis, shrinkage {share:g}"] = mahalanobis(x_train, t_train, share)
    variants["relative, Ledoit-Wolf"] = mahalanobis(x_train, t_train, relative=True)
    variants["relative, shrinkage 0.1"] = mahalanobis(x_train, t_train, 0.1, relative=True)
    for k in (1, 10, 50):
        variants[f"knn k={k}"] = knn(x_train, k)

    rows = []
    for name, score in variants.items():
        scores = score(x_val)
        timed = name not in ("softmax",) and not name.startswith("shipped")
        rows.append(
            {
                "variant": name,
                "auroc": round(auroc(scores, positive), 4),
                "fpr_at_95_recall": round(fpr_at_95(scores, positive), 4),
                "cross_fitted": {
                    f"{drop:g}": cross_fitted(scores, argmax, y_val, oos_index, labels, drop)
                    for drop in args.max_in_scope_drop
                },
                "us_per_query_numpy": round(per_query_us(score, x_val), 1) if timed else None,
            }
        )
    report = {"bundle": f"{model.name}@{model.version}", "train_in_scope": int(len(x_train)), "rows": rows}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['bundle']}: variants fitted on {report['train_in_scope']} in-scope training texts, val scored")
    drops = args.max_in_scope_drop
    head = " ".join(f"{'drop ' + format(d, 'g') + ': in-scope / OOS recall (95% CI)':>44}" for d in drops)
    print(f"{'variant':34} {'AUROC':>6} {'FPR@95':>7} {head} {'us/query':>9}")
    for row in rows:
        cells = []
        for drop in drops:
            p = row["cross_fitted"][f"{drop:g}"]["pooled"]
            cells.append(f"{p['in_scope_accuracy']:6.2f} / {p['oos_recall']:5.1f} {str(p['oos_recall_interval']):>14}")
        cost = "" if row["us_per_query_numpy"] is None else f"{row['us_per_query_numpy']:9.1f}"
        cells = " ".join(f"{c:>44}" for c in cells)
        print(f"{row['variant']:34} {row['auroc']:6.4f} {row['fpr_at_95_recall']:7.3f} {cells} {cost}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
