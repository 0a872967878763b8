"""Token logits -> entity spans: the pure-Python twin of kernels/tokencls.pyx.

Inputs: `logits` float32 (B, T, L), `offsets` int64 (B, T, 2) character spans into the original text,
`word_ids` int64 (B, T) with -1 on special and padding tokens, `labels` the L tag strings.
Output: per row, the entities as plain (start, end, label, score) tuples (the runtime makes them Entity).
Rules (both twins follow them exactly; they follow Hugging Face's TokenClassificationPipeline):

1. Tags: "B-X" begins type X, "I-X" continues type X, any other tag "X" continues type X; type "O" is outside.
2. Token scores: for every token with word_id >= 0 (others are never read, and a non-finite logit there
   raises ValueError naming row and token), z = float64 logits, label = first index of the max logit,
   s = sum over labels, in label order, of exp(z - max), prob(label) = exp(z - max) / s, score = 1 / s.
3. Units (what gets grouped), in token order; a token with word_id < 0 is a barrier that ends the current
   word and the current entity (HF skips special tokens; a barrier also keeps entities out of padding and
   from crossing the separator of a sentence pair):
   - "none" / "simple": every token is a unit (its label and score, its offsets).
   - "first" / "max" / "average": consecutive tokens with the same word_id form one word, the unit; its span
     runs from its first token's start to its last token's end. "first": the first token's label and score;
     "max": the label and score of the token with the highest score (the first such token on ties);
     "average": per label, the mean of the tokens' probabilities (summed in token order, divided by the
     count); the first label with the highest mean, and that mean as the score.
4. "none": every unit whose type is not O is an entity labelled with its full tag ("B-PER"), scored by it.
5. Grouping (every other strategy): a unit of type O ends the open entity. A unit continues the open entity
   when its type matches and its tag is not B-; otherwise it ends the open entity and begins a new one if
   its tag is B-, or if scheme is "BIO" (IOB1-like: I- may begin an entity, as HF does). Under "IOB2"
   every entity begins with B-: an I- tag that continues nothing is dropped (treated as O).
   An entity spans its first unit's start to its last unit's end, is labelled with the type ("PER"), and
   scored by the mean of its units' scores (summed in order, divided by the count).
"""

from __future__ import annotations

import math

import numpy as np

STRATEGIES = ("none", "simple", "first", "max", "average")
SCHEMES = ("IOB2", "BIO")


def parse_labels(labels, count: int) -> tuple[list[str], list[bool], list[str]]:
    """-> (tags, begins, types): whether each tag is a B- tag, and its entity type ("O" is outside)."""
    tags = list(labels)
    if len(tags) != count:
        raise ValueError(f"labels has {len(tags)} tags, logits has {count} classes")
    begins, types = [], []
    for tag in tags:
        if not isinstance(tag, str):
            raise TypeError(f"labels must be strings, got {type(tag).__name__}")
        begins.append(tag.startswith("B-"))
        types.append(tag[2:] if tag.startswith(("B-", "I-")) else tag)
    return tags, begins, types


def _int_array(values, shape: tuple, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.size and array.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got {array.dtype}")
    if array.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {array.shape}")
    return np.ascontiguousarray(array, dtype=np.int64)


def check_inputs(logits, offsets, word_ids, labels, strategy, scheme):
    """Shared by both twins: -> (logits, offsets, word_ids, tags, begins, types) as C-contiguous arrays."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}; got {scheme!r}")
    scores = np.asarray(logits)
    if scores.dtype.kind not in "fiu":
        raise TypeError(f"logits must be a real numeric array, got {scores.dtype}")
    if scores.ndim != 3:
        raise ValueError(f"logits must be 3-D (batch, tokens, labels), got shape {scores.shape}")
    batch, tokens, count = scores.shape
    if count < 1:
        raise ValueError("logits must have at least one label")
    spans = _int_array(offsets, (batch, tokens, 2), "offsets")
    words = _int_array(word_ids, (batch, tokens), "word_ids")
    tags, begins, types = parse_labels(labels, count)
    return np.ascontiguousarray(scores, dtype=np.float32), spans, words, tags, begins, types


def _token(row: list[float], b: int, t: int) -> tuple[int, float, list[float]]:
    """(label, score, exps, s) of one token: the first max, 1 / s, exp(z - max) per label."""
    best = 0
    peak = row[0]
    for label, z in enumerate(row):
        if not math.isfinite(z):
            raise ValueError(f"logits row {b} token {t} is not finite")
        if z > peak:
            best, peak = label, z
    exps = [math.exp(z - peak) for z in row]
    total = 0.0
    for e in exps:
        total += e
    return best, 1.0 / total, exps, total


def _word(tokens: list, strategy: str) -> tuple[int, float]:
    """(label, score) of one word from its tokens' (label, score, exps, s)."""
    if strategy == "first":
        return tokens[0][0], tokens[0][1]
    if strategy == "max":
        best = tokens[0]
        for token in tokens[1:]:
            if token[1] > best[1]:
                best = token
        return best[0], best[1]
    sums = [0.0] * len(tokens[0][2])
    for _, _, exps, total in tokens:
        for label, e in enumerate(exps):
            sums[label] += e / total
    means = [value / len(tokens) for value in sums]
    best = 0
    for label, value in enumerate(means):
        if value > means[best]:
            best = label
    return best, means[best]


def _units(row, words, spans, strategy: str, b: int):
    """Yields (label, score, start, end) per unit, None per barrier (rule 3)."""
    word: list = []
    word_id = start = end = 0
    for t, wid in enumerate(words):
        if wid >= 0 and strategy in ("none", "simple"):
            label, score, _, _ = _token(row[t], b, t)
            yield label, score, spans[t][0], spans[t][1]
            continue
        if word and (wid < 0 or wid != word_id):
            yield (*_word(word, strategy), start, end)
            word = []
        if wid < 0:
            yield None
            continue
        if not word:
            word_id, start = wid, spans[t][0]
        word.append(_token(row[t], b, t))
        end = spans[t][1]
    if word:
        yield (*_word(word, strategy), start, end)


def _decode_row(row, words, spans, tags, begins, types, strategy, strict, b) -> list[tuple[int, int, str, float]]:
    entities: list[tuple[int, int, str, float]] = []
    if strategy == "none":
        for unit in _units(row, words, spans, strategy, b):
            if unit is not None and types[unit[0]] != "O":
                entities.append((unit[2], unit[3], tags[unit[0]], unit[1]))
        return entities
    open_type = None
    start = end = count = 0
    total = 0.0
    for unit in _units(row, words, spans, strategy, b):
        kind = None if unit is None else types[unit[0]]
        if kind is not None and kind != "O" and kind == open_type and not begins[unit[0]]:
            end, total, count = unit[3], total + unit[1], count + 1
            continue
        if open_type is not None:
            entities.append((start, end, open_type, total / count))
            open_type = None
        if kind is not None and kind != "O" and (begins[unit[0]] or not strict):
            open_type, start, end, total, count = kind, unit[2], unit[3], unit[1], 1
    if open_type is not None:
        entities.append((start, end, open_type, total / count))
    return entities


def decode_entities(logits, offsets, word_ids, labels, strategy="simple", scheme="IOB2"):
    """Per row, the list of (start, end, label, score) tuples; see the module docstring for the rules."""
    scores, spans, words, tags, begins, types = check_inputs(logits, offsets, word_ids, labels, strategy, scheme)
    strict = scheme == "IOB2"
    return [
        _decode_row(scores[b].tolist(), words[b].tolist(), spans[b].tolist(), tags, begins, types, strategy, strict, b)
        for b in range(scores.shape[0])
    ]
