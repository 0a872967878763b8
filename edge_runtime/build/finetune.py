"""Full fine-tuning of encoder + linear head, torch on CPU: on mean-pooled features (a sentence
classifier) or on every token (`per_token`: a tagger; targets are one tag per token, -100 = ignore).

The result is an HF model folder (the tuned encoder) plus a LinearHead, cached by a key of
(source model, data, hyper-parameters) so a rerun after a later failure does not retrain.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .. import kernels
from .head import LinearHead


@dataclass
class FinetuneConfig:
    epochs: int = 3
    batch_size: int = 32
    encoder_lr: float = 1e-4
    head_lr: float = 2e-3
    weight_decay: float = 0.01
    warmup: float = 0.06
    dropout: float = 0.1
    seed: int = 0
    threads: int = 2
    # Batches are cut from windows of this many batches sorted by length (1: random batches). On CLINC150,
    # random batches of 32 pad to 1.8x the real tokens; sorted windows of 50 batches pad to 1.03x.
    bucket_window: int = 50
    max_steps: int = 0  # stop after this many optimiser steps (0: all epochs); a quick smoke build
    # Distillation (build/distill.py): the share of the loss on a teacher's soft labels, and the temperature
    # both sides are softened by (the KL term is scaled by its square, so its gradients keep their size).
    distill_weight: float = 0.0
    distill_temperature: float = 1.0


def cache_key(
    model_fingerprint: str,
    ids: list[list[int]],
    targets: list,
    config: FinetuneConfig,
    per_token: bool = False,
    type_ids: list[list[int]] | None = None,
    soft: np.ndarray | None = None,
) -> str:
    digest = hashlib.sha256(model_fingerprint.encode())
    extra = (["per_token"] if per_token else []) + ([type_ids] if type_ids is not None else [])
    if soft is not None:
        extra.append(hashlib.sha256(np.ascontiguousarray(soft, dtype=np.float32).tobytes()).hexdigest())
    digest.update(json.dumps([ids, targets, asdict(config)] + extra).encode())
    return digest.hexdigest()[:16]


def _schedule(total_steps: int, warmup: float):
    warm = max(1, int(total_steps * warmup))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total_steps - step) / max(1, total_steps - warm))

    return factor


def length_batches(lengths: list[int], batch_size: int, window: int, generator) -> list[list[int]]:
    """One epoch's batches (lists of example indices): a random order, cut into windows of `window`
    batches; each window is sorted by length and cut into batches; then the batches are shuffled. A batch
    pads to a length close to its own texts', and every epoch still sees new batches in a new order."""
    import torch

    order = torch.randperm(len(lengths), generator=generator).tolist()
    span = batch_size * max(1, window)
    batches = []
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=lengths.__getitem__)
        batches += [chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def _batches(ids, targets, batch_size, window, generator, per_token: bool, type_ids=None):
    import torch

    for chosen in length_batches([len(row) for row in ids], batch_size, window, generator):
        rows = [ids[i] for i in chosen]
        width = max(len(row) for row in rows)
        types = [type_ids[i] for i in chosen] if type_ids is not None else None
        input_ids, mask, token_types = kernels.batching.pad_batch(rows, width, 0, types)
        if token_types is None:
            token_types = np.zeros_like(input_ids)
        if per_token:
            labels = torch.full((len(chosen), width), -100, dtype=torch.long)
            for row, i in enumerate(chosen):
                labels[row, : len(targets[i])] = torch.tensor(targets[i])
        else:
            labels = torch.tensor([targets[i] for i in chosen])
        yield torch.from_numpy(input_ids), torch.from_numpy(mask), torch.from_numpy(token_types), labels, chosen


def finetune(
    model_dir: Path,
    ids: list[list[int]],
    targets: list,
    n_classes: int,
    config: FinetuneConfig,
    out_dir: Path,
    progress,
    per_token: bool = False,
    type_ids: list[list[int]] | None = None,
    soft: np.ndarray | None = None,
) -> LinearHead:
    """Train; save the tuned encoder to `out_dir/encoder` and the head to `out_dir/head.npz`. With `soft`
    (one row of teacher probabilities per text, sentence classifiers only), the loss mixes cross-entropy on
    the gold labels with the KL divergence to the teacher (config.distill_weight); a text whose target is
    -100 has no gold label and learns from the teacher alone."""
    import torch
    from transformers import AutoModel

    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    encoder = AutoModel.from_pretrained(str(model_dir), local_files_only=True)
    hidden = encoder.config.hidden_size
    head = torch.nn.Linear(hidden, n_classes)
    dropout = torch.nn.Dropout(config.dropout)
    no_decay = ("bias", "LayerNorm.weight")
    groups = [
        {
            "params": [p for n, p in encoder.named_parameters() if not n.endswith(no_decay)],
            "lr": config.encoder_lr,
            "weight_decay": config.weight_decay,
        },
        {
            "params": [p for n, p in encoder.named_parameters() if n.endswith(no_decay)],
            "lr": config.encoder_lr,
            "weight_decay": 0.0,
        },
        {"params": [head.weight], "lr": config.head_lr, "weight_decay": config.weight_decay},
        {"params": [head.bias], "lr": config.head_lr, "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups)
    steps_per_epoch = -(-len(ids) // config.batch_size)
    total = steps_per_epoch * config.epochs
    if config.max_steps:
        total = min(total, config.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(total, config.warmup))
    generator = torch.Generator().manual_seed(config.seed)
    encoder.train()
    done = 0
    with progress.bar("fine-tune", total) as advance:
        for epoch in range(config.epochs):
            running = 0.0
            batches = _batches(ids, targets, config.batch_size, config.bucket_window, generator, per_token, type_ids)
            for step, (input_ids, mask, token_types, labels, chosen) in enumerate(
                itertools.islice(batches, total - done), 1
            ):
                states = encoder(input_ids=input_ids, attention_mask=mask, token_type_ids=token_types).last_hidden_state
                if per_token:
                    logits = head(dropout(states))
                    loss = torch.nn.functional.cross_entropy(
                        logits.reshape(-1, n_classes), labels.reshape(-1), ignore_index=-100
                    )
                else:
                    weights = mask.unsqueeze(-1).float()
                    pooled = (states * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
                    logits = head(dropout(pooled))
                    if soft is None:
                        loss = torch.nn.functional.cross_entropy(logits, labels)
                    else:
                        loss = _distillation_loss(logits, labels, torch.from_numpy(soft[chosen]), config)
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
                optimizer.step()
                scheduler.step()
                running += loss.item()
                done += 1
                advance(1, f"epoch {epoch + 1}/{config.epochs}, loss {running / step:.3f}")
    encoder.eval()
    out_dir = Path(out_dir)
    encoder.save_pretrained(str(out_dir / "encoder"))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (Path(model_dir) / name).is_file():
            shutil.copyfile(Path(model_dir) / name, out_dir / "encoder" / name)
    trained = LinearHead(
        head.weight.detach().numpy().astype(np.float32), head.bias.detach().numpy().astype(np.float32), normalize=False
    )
    np.savez(out_dir / "head.npz", weight=trained.weight, bias=trained.bias)
    return trained


def _distillation_loss(logits, labels, teacher, config: FinetuneConfig):
    """(1 - w) * cross-entropy on the gold labels + w * T^2 * KL(teacher || student at temperature T)."""
    import torch

    temperature, weight = config.distill_temperature, config.distill_weight
    student = torch.nn.functional.log_softmax(logits / temperature, dim=-1)
    kl = torch.nn.functional.kl_div(student, teacher, reduction="batchmean") * temperature**2
    gold = labels != -100
    if not bool(gold.any()):
        return kl
    return (1.0 - weight) * torch.nn.functional.cross_entropy(logits[gold], labels[gold]) + weight * kl


def load_cached(out_dir: Path) -> LinearHead | None:
    out_dir = Path(out_dir)
    if not (out_dir / "complete").is_file():
        return None
    saved = np.load(out_dir / "head.npz")
    return LinearHead(saved["weight"], saved["bias"], normalize=False)


def cached_finetune(
    model_dir,
    ids,
    targets,
    n_classes,
    config,
    cache_root: Path,
    key: str,
    progress,
    per_token: bool = False,
    type_ids=None,
    soft: np.ndarray | None = None,
) -> tuple[Path, LinearHead]:
    """(tuned encoder folder, head), trained now or taken from `cache_root/finetune/key`."""
    out_dir = Path(cache_root) / "finetune" / key
    head = load_cached(out_dir)
    if head is not None:
        progress.log(f"fine-tune: reusing cached run {out_dir}")
        return out_dir / "encoder", head
    if out_dir.exists():
        shutil.rmtree(out_dir)  # an interrupted run
    out_dir.mkdir(parents=True)
    head = finetune(model_dir, ids, targets, n_classes, config, out_dir, progress, per_token, type_ids, soft)
    (out_dir / "complete").write_text("ok\n")
    return out_dir / "encoder", head
