"""The numeric kernels (batching, classify, pooling, tokencls, ood): behaviour of each twin, and twin agreement.

Behaviour tests run once per implementation ("pure", "compiled"); agreement tests compare the two twins
directly. Compiled cases skip, saying why, when the Cython extension is not built.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edge_runtime.kernels import compiled_module, pure_module

NAMES = ("batching", "classify", "pooling", "tokencls", "ood")
NOT_BUILT = "Cython extension edge_runtime.kernels._{} is not built (pip install -e . --no-build-isolation)"
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _twin(kind: str, name: str):
    if kind == "pure":
        return pure_module(name)
    module = compiled_module(name)
    if module is None:
        pytest.skip(NOT_BUILT.format(name))
    return module


def _both(name: str):
    module = compiled_module(name)
    if module is None:
        pytest.skip(NOT_BUILT.format(name))
    return pure_module(name), module


@pytest.fixture(params=["pure", "compiled"])
def kind(request):
    return request.param


def assert_close(actual, expected, scale=1.0):
    """<= 1e-6 relative, with an absolute floor of 1e-6 * scale for values near zero."""
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6 * scale)


# ---------------------------------------------------------------- batching


def test_pad_batch_pads_truncates_and_masks(kind):
    batching = _twin(kind, "batching")
    ids, mask, types = batching.pad_batch([[5, 6, 7], [8], []], max_length=8, pad_id=1)
    assert ids.dtype == np.int64 and mask.dtype == np.int64 and types is None
    assert ids.tolist() == [[5, 6, 7], [8, 1, 1], [1, 1, 1]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    ids, mask, types = batching.pad_batch([[1, 2, 3, 4], [9, 8]], max_length=3, type_ids=[[0, 0, 1, 1], [1, 1]])
    assert ids.tolist() == [[1, 2, 3], [9, 8, 0]]
    assert types.tolist() == [[0, 0, 1], [1, 1, 0]]


def test_pad_batch_accepts_numpy_rows_and_tuples(kind):
    batching = _twin(kind, "batching")
    rows = [np.array([3, 4], dtype=np.int32), (7,), np.arange(10, 15, dtype=np.int64)[::2], [True, 2]]
    ids, mask, _ = batching.pad_batch(rows, max_length=16)
    assert ids.tolist() == [[3, 4, 0], [7, 0, 0], [10, 12, 14], [1, 2, 0]]
    assert mask.sum(axis=1).tolist() == [2, 1, 3, 2]


def test_pad_batch_empty_inputs(kind):
    batching = _twin(kind, "batching")
    ids, mask, types = batching.pad_batch([], max_length=4, type_ids=[])
    assert ids.shape == mask.shape == types.shape == (0, 0)
    ids, mask, _ = batching.pad_batch([[], []], max_length=4)
    assert ids.shape == (2, 0)


def test_pad_batch_only_reads_the_kept_prefix(kind):
    batching = _twin(kind, "batching")
    ids, _, _ = batching.pad_batch([[1, 2, "not read"]], max_length=2)
    assert ids.tolist() == [[1, 2]]


@pytest.mark.parametrize(
    "args, error",
    [
        (([[1]], 0), ValueError),
        (([[1]], 2.5), TypeError),
        (([[1, 2.5]], 4), TypeError),
        (([["a"]], 4), TypeError),
        (([[[1, 2]]], 4), ValueError),
        (([[1, 2]], 4, 0, [[0]]), ValueError),
        (([[1, 2]], 4, 0, []), ValueError),
    ],
)
def test_pad_batch_rejects_bad_input(kind, args, error):
    batching = _twin(kind, "batching")
    with pytest.raises(error):
        batching.pad_batch(*args)


def test_length_buckets_example(kind):
    batching = _twin(kind, "batching")
    order, bounds, inverse = batching.length_buckets([7, 3, 3, 10, 1, 50], max_batch=2, max_tokens=20)
    assert order.tolist() == [4, 1, 2, 0, 3, 5]
    # [1, 3] -> 2 * 3 = 6; [3, 7] -> 14; [10] (2 * 50 > 20 stops pairing); [50] alone, though over the cap
    assert bounds.tolist() == [0, 2, 4, 5, 6]
    assert np.array_equal(np.array([7, 3, 3, 10, 1, 50])[order][inverse], [7, 3, 3, 10, 1, 50])


def test_length_buckets_empty_and_errors(kind):
    batching = _twin(kind, "batching")
    order, bounds, inverse = batching.length_buckets([], 4, 100)
    assert order.shape == (0,) and bounds.tolist() == [0] and inverse.shape == (0,)
    with pytest.raises(ValueError, match="lengths must be >= 0"):
        batching.length_buckets([3, -1], 4, 100)
    with pytest.raises(ValueError):
        batching.length_buckets([3], 0, 100)
    with pytest.raises(TypeError):
        batching.length_buckets([1.5], 4, 100)
    with pytest.raises(ValueError):
        batching.length_buckets([[1]], 4, 100)


token_rows = st.lists(st.lists(st.integers(-(2**40), 2**40), max_size=12), max_size=6)


@SETTINGS
@given(
    rows=token_rows,
    max_length=st.integers(1, 14),
    pad_id=st.integers(-5, 5),
    as_arrays=st.booleans(),
    with_types=st.booleans(),
)
def test_pad_batch_twins_agree(rows, max_length, pad_id, as_arrays, with_types):
    pure, compiled = _both("batching")
    sequences = [np.array(row, dtype=np.int64) for row in rows] if as_arrays else rows
    type_ids = [[i % 2 for i in range(len(row))] for row in rows] if with_types else None
    expected = pure.pad_batch(sequences, max_length, pad_id, type_ids)
    actual = compiled.pad_batch(sequences, max_length, pad_id, type_ids)
    for want, got in zip(expected, actual):
        assert (want is None) == (got is None)
        if want is not None:
            assert got.dtype == np.int64 and np.array_equal(want, got)
    ids, mask, _ = expected
    assert mask.sum(axis=1).tolist() == [min(len(row), max_length) for row in rows]
    for i, row in enumerate(rows):
        n = min(len(row), max_length)
        assert ids[i, :n].tolist() == list(row[:n]) and (ids[i, n:] == pad_id).all()


@SETTINGS
@given(lengths=st.lists(st.integers(0, 60), max_size=40), max_batch=st.integers(1, 8), max_tokens=st.integers(1, 200))
def test_length_buckets_twins_agree_and_hold_the_rules(lengths, max_batch, max_tokens):
    pure, compiled = _both("batching")
    order, bounds, inverse = pure.length_buckets(np.array(lengths, dtype=np.int64), max_batch, max_tokens)
    for want, got in zip((order, bounds, inverse), compiled.length_buckets(lengths, max_batch, max_tokens)):
        assert got.dtype == np.int64 and np.array_equal(want, got)
    values = np.array(lengths, dtype=np.int64)
    assert np.array_equal(order, np.argsort(values, kind="stable"))
    assert np.array_equal(values[order][inverse], values)
    assert bounds[0] == 0 and bounds[-1] == len(lengths) and (np.diff(bounds) > 0).all()
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        size, longest = hi - lo, values[order[hi - 1]]
        assert size <= max_batch
        assert size == 1 or size * longest <= max_tokens
        if hi < len(lengths):  # greedy: the next item would not have fit
            assert size + 1 > max_batch or (size + 1) * values[order[hi]] > max_tokens


# ---------------------------------------------------------------- classify


def _softmax64(logits, temperature=1.0):
    z = np.asarray(logits, dtype=np.float64) / temperature
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_classify_matches_a_plain_softmax(kind):
    classify = _twin(kind, "classify")
    logits = np.array([[2.0, 1.0, 0.1, -3.0], [0.0, 0.0, 5.0, 1.0]], dtype=np.float32)
    result = classify.classify_logits(logits, temperature=2.0, top_k=3, full_softmax=True)
    probs = _softmax64(logits, 2.0)
    assert result.argmax.dtype == np.int64 and result.argmax.tolist() == [0, 2]
    assert result.top_indices.tolist() == [[0, 1, 2], [2, 3, 0]]
    assert result.top_probs.dtype == np.float32
    assert_close(result.top_probs, np.take_along_axis(probs, result.top_indices, axis=1))
    assert_close(result.max_prob, probs.max(axis=1))
    top2 = np.sort(probs, axis=1)[:, ::-1]
    assert_close(result.margin, top2[:, 0] - top2[:, 1])
    assert_close(result.entropy, -(probs * np.log(probs)).sum(axis=1) / math.log(4))
    assert_close(result.probs, probs)
    assert type(result).__name__ == "ClassifyResult"


def test_classify_ties_take_the_lowest_index(kind):
    classify = _twin(kind, "classify")
    result = classify.classify_logits(np.array([[1, 3, 3, 1, 3, 0, 1]], dtype=np.float32), top_k=5)
    assert result.top_indices.tolist() == [[1, 2, 4, 0, 3]]
    assert result.argmax.tolist() == [1] and result.margin.tolist() == [0.0]


def test_classify_single_class_and_uniform(kind):
    classify = _twin(kind, "classify")
    single = classify.classify_logits(np.array([[4.0], [-9.0]], dtype=np.float32))
    assert single.top_indices.shape == (2, 1)
    assert single.max_prob.tolist() == [1.0, 1.0] and single.margin.tolist() == [1.0, 1.0]
    assert single.entropy.tolist() == [0.0, 0.0] and single.probs is None
    uniform = classify.classify_logits(np.zeros((1, 6), dtype=np.float32), top_k=2)
    assert_close(uniform.entropy, [1.0])
    assert uniform.top_indices.tolist() == [[0, 1]]
    peaked = classify.classify_logits(np.array([[1000.0, 0.0, 0.0]], dtype=np.float32))
    assert peaked.max_prob.tolist() == [1.0] and peaked.entropy.tolist() == [0.0]


def test_classify_empty_batch(kind):
    classify = _twin(kind, "classify")
    result = classify.classify_logits(np.zeros((0, 3), dtype=np.float32), top_k=5, full_softmax=True)
    assert result.top_indices.shape == (0, 3) and result.top_probs.shape == (0, 3)
    assert result.argmax.shape == result.max_prob.shape == result.margin.shape == result.entropy.shape == (0,)
    assert result.probs.shape == (0, 3)


def test_classify_accepts_float64_lists(kind):
    classify = _twin(kind, "classify")
    result = classify.classify_logits([[0.0, 2.0]], top_k=1)
    assert result.argmax.tolist() == [1] and result.top_probs.shape == (1, 1)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_classify_rejects_non_finite_rows_by_number(kind, bad):
    classify = _twin(kind, "classify")
    logits = np.zeros((4, 3), dtype=np.float32)
    logits[2, 1] = bad
    with pytest.raises(ValueError, match="row 2"):
        classify.classify_logits(logits)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"temperature": 0.0}, ValueError),
        ({"temperature": -1.0}, ValueError),
        ({"temperature": float("nan")}, ValueError),
        ({"top_k": 0}, ValueError),
        ({"top_k": 6}, ValueError),
        ({"top_k": 2.0}, TypeError),
    ],
)
def test_classify_rejects_bad_arguments(kind, kwargs, error):
    classify = _twin(kind, "classify")
    with pytest.raises(error):
        classify.classify_logits(np.zeros((1, 3), dtype=np.float32), **kwargs)


def test_classify_rejects_bad_shapes(kind):
    classify = _twin(kind, "classify")
    with pytest.raises(ValueError):
        classify.classify_logits(np.zeros(3, dtype=np.float32))
    with pytest.raises(ValueError):
        classify.classify_logits(np.zeros((2, 0), dtype=np.float32))


logit_values = st.one_of(
    st.floats(-50, 50, width=32),
    st.sampled_from([0.0, 1.0, -1.0, 3.0e38, -3.0e38, 1e-30]),  # ties, huge and tiny values
)


@SETTINGS
@given(
    logits=hnp.arrays(np.float32, st.tuples(st.integers(0, 5), st.integers(1, 40)), elements=logit_values),
    temperature=st.sampled_from([1.0, 0.5, 2.0, 0.07, 13.0]),
    top_k=st.integers(1, 5),
    full=st.booleans(),
)
def test_classify_twins_agree(logits, temperature, top_k, full):
    pure, compiled = _both("classify")
    want = pure.classify_logits(logits, temperature, top_k, full)
    got = compiled.classify_logits(logits, temperature, top_k, full)
    assert type(want).__name__ == type(got).__name__
    for field in ("argmax", "top_indices"):
        assert getattr(got, field).dtype == np.int64
        assert np.array_equal(getattr(want, field), getattr(got, field))
    for field in ("top_probs", "max_prob", "margin", "entropy"):
        assert getattr(got, field).dtype == np.float32
        assert_close(getattr(got, field), getattr(want, field), scale=0.1)
    assert (want.probs is None) == (got.probs is None) == (not full)
    if full:
        assert_close(got.probs, want.probs, scale=0.1)
        if len(logits):
            assert_close(got.probs.sum(axis=1), np.ones(len(logits)), scale=10)
    assert ((got.entropy >= 0) & (got.entropy <= 1)).all()


# ---------------------------------------------------------------- pooling


def test_mean_pool_masks_and_normalises(kind):
    pooling = _twin(kind, "pooling")
    hidden = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    mask = np.array([[1, 1, 0], [0, 0, 0]])
    pooled = pooling.mean_pool(hidden, mask)
    assert pooled.dtype == np.float32 and pooled.shape == (2, 2)
    assert pooled.tolist() == [[1.0, 2.0], [0.0, 0.0]]  # all-masked row -> zeros
    unit = pooling.mean_pool(hidden, mask.astype(bool), normalize=True)
    assert_close(unit[0], np.array([1.0, 2.0]) / math.sqrt(5))
    assert unit[1].tolist() == [0.0, 0.0]


def test_cls_pool_and_l2_normalize(kind):
    pooling = _twin(kind, "pooling")
    hidden = np.array([[[3.0, 4.0], [9.0, 9.0]], [[0.0, 0.0], [1.0, 1.0]]], dtype=np.float32)
    assert pooling.cls_pool(hidden).tolist() == [[3.0, 4.0], [0.0, 0.0]]
    assert_close(pooling.cls_pool(hidden, normalize=True), [[0.6, 0.8], [0.0, 0.0]])
    assert_close(pooling.l2_normalize(np.array([3.0, 4.0])), [0.6, 0.8])
    assert pooling.l2_normalize(np.zeros((2, 3))).tolist() == [[0.0] * 3] * 2
    assert pooling.l2_normalize(np.zeros((2, 0))).shape == (2, 0)
    big = pooling.l2_normalize(np.array([[3e38, 3e38]], dtype=np.float32))
    assert_close(big, [[math.sqrt(0.5)] * 2])


def test_pooling_rejects_bad_shapes(kind):
    pooling = _twin(kind, "pooling")
    with pytest.raises(ValueError):
        pooling.mean_pool(np.zeros((2, 3), dtype=np.float32), np.ones((2, 3), dtype=np.int64))
    with pytest.raises(ValueError):
        pooling.mean_pool(np.zeros((2, 3, 4), dtype=np.float32), np.ones((2, 4), dtype=np.int64))
    with pytest.raises(TypeError):
        pooling.mean_pool(np.zeros((2, 3, 4), dtype=np.float32), np.ones((2, 3)) * 0.5)
    with pytest.raises(ValueError):
        pooling.cls_pool(np.zeros((2, 0, 4), dtype=np.float32))


@SETTINGS
@given(
    shape=st.tuples(st.integers(1, 4), st.integers(1, 9), st.integers(1, 20)),
    data=st.data(),
    scale=st.sampled_from([1.0, 1e-20, 1e6, 1e30]),
    normalize=st.booleans(),
)
def test_pooling_twins_agree(shape, data, scale, normalize):
    pure, compiled = _both("pooling")
    hidden = data.draw(hnp.arrays(np.float32, shape, elements=st.floats(-1, 1, width=32))) * np.float32(scale)
    mask = data.draw(hnp.arrays(np.int64, shape[:2], elements=st.integers(0, 2)))
    want = pure.mean_pool(hidden, mask, normalize)
    got = compiled.mean_pool(hidden, mask, normalize)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert_close(got, want, scale=1.0 if normalize else scale)
    assert (got[mask.sum(axis=1) == 0] == 0).all()
    assert_close(compiled.cls_pool(hidden, normalize), pure.cls_pool(hidden, normalize), scale=1.0)
    norms = np.linalg.norm(compiled.l2_normalize(hidden).astype(np.float64), axis=-1)
    assert (np.isclose(norms, 1.0, atol=1e-6) | (norms == 0)).all()
    assert_close(compiled.l2_normalize(hidden), pure.l2_normalize(hidden), scale=1.0)


# ---------------------------------------------------------------- tokencls

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def _onehot(tags, strength=6.0):
    logits = np.zeros((1, len(tags), len(LABELS)), dtype=np.float32)
    for t, tag in enumerate(tags):
        logits[0, t, LABELS.index(tag)] = strength
    return logits


def _tokens(tags, word_ids):
    offsets = np.array([[[4 * t, 4 * t + 3] for t in range(len(tags))]], dtype=np.int64)
    return _onehot(tags), offsets, np.array([word_ids], dtype=np.int64)


P6 = math.exp(6.0) / (math.exp(6.0) + len(LABELS) - 1)  # score of a one-hot token


def _spans(rows):
    return [[(start, end, label) for start, end, label, _score in row] for row in rows]


def test_tokencls_simple_groups_by_iob2_and_bio(kind):
    tokencls = _twin(kind, "tokencls")
    #        [CLS]  John     Sm       ##ith    lives  Par      ##is     [SEP]
    tags = ["O", "B-PER", "I-PER", "I-PER", "O", "I-LOC", "I-LOC", "O"]
    logits, offsets, words = _tokens(tags, [-1, 0, 1, 1, 2, 3, 3, -1])
    strict = tokencls.decode_entities(logits, offsets, words, LABELS)  # IOB2: orphan I-LOC dropped
    assert strict == [[(4, 15, "PER", pytest.approx(P6))]]
    loose = tokencls.decode_entities(logits, offsets, words, LABELS, scheme="BIO")
    assert _spans(loose) == [[(4, 15, "PER"), (20, 27, "LOC")]]
    tokens = tokencls.decode_entities(logits, offsets, words, LABELS, strategy="none")
    assert _spans(tokens) == [
        [(4, 7, "B-PER"), (8, 11, "I-PER"), (12, 15, "I-PER"), (20, 23, "I-LOC"), (24, 27, "I-LOC")]
    ]
    assert all(score == pytest.approx(P6) for _, _, _, score in tokens[0])


def test_tokencls_b_tag_and_barrier_split_entities(kind):
    tokencls = _twin(kind, "tokencls")
    tags = ["B-PER", "I-PER", "B-PER", "B-LOC", "I-PER", "O", "B-PER", "O", "I-PER"]
    logits, offsets, words = _tokens(tags, [0, 1, 2, 3, 4, -1, 5, -1, 6])
    strict = tokencls.decode_entities(logits, offsets, words, LABELS, strategy="simple", scheme="IOB2")
    assert _spans(strict) == [[(0, 7, "PER"), (8, 11, "PER"), (12, 15, "LOC"), (24, 27, "PER")]]
    loose = tokencls.decode_entities(logits, offsets, words, LABELS, strategy="simple", scheme="BIO")
    assert _spans(loose) == [
        [(0, 7, "PER"), (8, 11, "PER"), (12, 15, "LOC"), (16, 19, "PER"), (24, 27, "PER"), (32, 35, "PER")]
    ]


def test_tokencls_word_strategies(kind):
    tokencls = _twin(kind, "tokencls")
    # word 0 = tokens 0, 1: O (weak, logit 2) then B-LOC (strong, logit 9); word 1 = token 2: I-LOC
    logits = np.zeros((1, 3, len(LABELS)), dtype=np.float32)
    logits[0, 0, 0] = 2.0
    logits[0, 1, 3] = 9.0
    logits[0, 2, 4] = 6.0
    offsets = np.array([[[0, 3], [3, 6], [7, 10]]], dtype=np.int64)
    words = np.array([[0, 0, 1]], dtype=np.int64)

    def decode(strategy, scheme="IOB2"):
        return tokencls.decode_entities(logits, offsets, words, LABELS, strategy, scheme)

    assert decode("first") == [[]]  # word 0 is O, word 1 an orphan I-LOC
    assert _spans(decode("first", "BIO")) == [[(7, 10, "LOC")]]
    p_weak = math.exp(2) / (math.exp(2) + 4)
    p_strong = math.exp(9) / (math.exp(9) + 4)
    assert decode("max") == [[(0, 10, "LOC", pytest.approx((p_strong + P6) / 2))]]
    average = ((1 - p_weak) / 4 + p_strong) / 2  # mean B-LOC probability over word 0
    assert decode("average") == [[(0, 10, "LOC", pytest.approx((average + P6) / 2))]]
    assert _spans(decode("simple")) == [[(3, 10, "LOC")]]


def test_tokencls_skips_non_finite_padding_but_rejects_real_tokens(kind):
    tokencls = _twin(kind, "tokencls")
    logits, offsets, words = _tokens(["B-PER", "O", "O"], [0, 1, -1])
    logits[0, 2, :] = np.nan  # padding is never read
    assert _spans(tokencls.decode_entities(logits, offsets, words, LABELS)) == [[(0, 3, "PER")]]
    logits[0, 1, 2] = np.inf
    with pytest.raises(ValueError, match="row 0 token 1"):
        tokencls.decode_entities(logits, offsets, words, LABELS)


@pytest.mark.parametrize(
    "change, error",
    [
        ({"strategy": "longest"}, ValueError),
        ({"scheme": "IOBES"}, ValueError),
        ({"labels": LABELS[:-1]}, ValueError),
        ({"word_ids": np.zeros((1, 2), dtype=np.int64)}, ValueError),
        ({"offsets": np.zeros((1, 3, 2), dtype=np.float32)}, TypeError),
        ({"logits": np.zeros((3, 5), dtype=np.float32)}, ValueError),
    ],
)
def test_tokencls_rejects_bad_input(kind, change, error):
    tokencls = _twin(kind, "tokencls")
    logits, offsets, words = _tokens(["O", "O", "O"], [0, 1, 2])
    args = {"logits": logits, "offsets": offsets, "word_ids": words, "labels": LABELS} | change
    with pytest.raises(error):
        tokencls.decode_entities(**args)


def test_tokencls_empty_shapes(kind):
    tokencls = _twin(kind, "tokencls")
    assert (
        tokencls.decode_entities(
            np.zeros((0, 4, 5), np.float32), np.zeros((0, 4, 2), np.int64), np.zeros((0, 4), np.int64), LABELS
        )
        == []
    )
    assert tokencls.decode_entities(
        np.zeros((2, 0, 5), np.float32), np.zeros((2, 0, 2), np.int64), np.zeros((2, 0), np.int64), LABELS
    ) == [[], []]


@st.composite
def token_batches(draw):
    batch, tokens = draw(st.integers(1, 3)), draw(st.integers(1, 12))
    labels = draw(
        st.sampled_from([["O"], ["O", "B-X"], ["O", "PER"], LABELS, ["B-A", "I-A", "O", "B-B", "I-B", "I-C", "B-C"]])
    )
    values = st.one_of(st.sampled_from([-1.0, 0.0, 1.0, 2.0]), st.floats(-30, 30, width=32))
    logits = draw(hnp.arrays(np.float32, (batch, tokens, len(labels)), elements=values))
    words = np.full((batch, tokens), -1, dtype=np.int64)
    offsets = np.zeros((batch, tokens, 2), dtype=np.int64)
    for b in range(batch):
        word = 0
        for t in range(tokens):
            step = draw(st.sampled_from(["special", "same", "next"]))
            if step != "special":
                word += step == "next"
                words[b, t] = word
            offsets[b, t] = (3 * t, 3 * t + draw(st.integers(0, 3)))
    return logits, offsets, words, labels


@SETTINGS
@given(
    inputs=token_batches(),
    strategy=st.sampled_from(["none", "simple", "first", "max", "average"]),
    scheme=st.sampled_from(["IOB2", "BIO"]),
)
def test_tokencls_twins_agree(inputs, strategy, scheme):
    pure, compiled = _both("tokencls")
    want = pure.decode_entities(*inputs, strategy=strategy, scheme=scheme)
    got = compiled.decode_entities(*inputs, strategy=strategy, scheme=scheme)
    assert _spans(got) == _spans(want)
    for want_row, got_row in zip(want, got):
        for w, g in zip(want_row, got_row):
            # plain tuples of plain Python values from both twins: the runtime, not a kernel, makes Entity
            assert type(g) is type(w) is tuple
            assert [type(value) for value in g] == [type(value) for value in w] == [int, int, str, float]
            assert g[3] == pytest.approx(w[3], rel=1e-9)
            assert 0.0 < g[3] <= 1.0 and g[0] <= g[1]


# ---------------------------------------------------------------- ood


def _whitening(covariance: np.ndarray) -> np.ndarray:
    """W with W @ W.T = inverse(covariance), as the build writes it (symmetric inverse square root)."""
    values, vectors = np.linalg.eigh(covariance)
    return vectors / np.sqrt(values)


def test_ood_distance_is_the_mahalanobis_distance_to_the_nearest_mean(kind):
    ood = _twin(kind, "ood")
    rng = np.random.default_rng(3)
    root = rng.normal(size=(6, 6))
    covariance = root @ root.T + 0.5 * np.eye(6)
    means = rng.normal(size=(4, 6)) * 3
    x = rng.normal(size=(5, 6)).astype(np.float32)
    whiten = _whitening(covariance)
    got = ood.nearest_distance(x, whiten.astype(np.float32), (means @ whiten).astype(np.float32))
    inverse = np.linalg.inv(covariance)
    want = [min((row - mean) @ inverse @ (row - mean) for mean in means) for row in x.astype(np.float64)]
    assert got.dtype == np.float64 and got.shape == (5,)
    np.testing.assert_allclose(got, want, rtol=1e-5)  # float32 parameters: ~1e-7 each, summed


def test_ood_scores_squash_the_log_distance(kind):
    ood = _twin(kind, "ood")
    identity = np.eye(2, dtype=np.float32)
    centers = np.array([[0.0, 0.0], [10.0, 0.0]], dtype=np.float32)
    x = np.array([[0.0, 0.0], [3.0, 4.0], [10.0, 1.0], [-30.0, 40.0]], dtype=np.float32)
    assert ood.nearest_distance(x, identity, centers).tolist() == [0.0, 25.0, 1.0, 2500.0]
    scores = ood.ood_scores(x, identity, centers, location=math.log(25.0), scale=0.5)
    assert scores.dtype == np.float32
    assert scores[0] == 0.0  # on a class mean: log 0 = -inf
    assert scores[1] == pytest.approx(0.5)  # at exp(location)
    assert scores[2] == pytest.approx(1 / (1 + 25.0**2), rel=1e-6)  # (distance / e^location) ** (1 / scale)
    assert scores[3] == pytest.approx(1 / (1 + 100.0**-2), rel=1e-6)
    assert ((scores >= 0) & (scores <= 1)).all()


def test_ood_empty_batch_and_bad_input(kind):
    ood = _twin(kind, "ood")
    identity, centers = np.eye(3, dtype=np.float32), np.zeros((2, 3), dtype=np.float32)
    assert ood.ood_scores(np.zeros((0, 3), dtype=np.float32), identity, centers, 0.0, 1.0).shape == (0,)
    bad = np.zeros((3, 3), dtype=np.float32)
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="row 2"):
        ood.nearest_distance(bad, identity, centers)
    with pytest.raises(ValueError):
        ood.nearest_distance(np.zeros((1, 4), dtype=np.float32), identity, centers)  # width != whiten rows
    with pytest.raises(ValueError):
        ood.nearest_distance(np.zeros((1, 3), dtype=np.float32), identity, np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(ValueError):
        ood.nearest_distance(np.zeros((1, 3), dtype=np.float32), identity, np.zeros((0, 3), dtype=np.float32))
    with pytest.raises(ValueError):
        ood.nearest_distance(np.zeros(3, dtype=np.float32), identity, centers)
    for location, scale in ((0.0, 0.0), (0.0, -1.0), (math.inf, 1.0), (0.0, math.nan)):
        with pytest.raises(ValueError):
            ood.ood_scores(np.zeros((1, 3), dtype=np.float32), identity, centers, location, scale)


@SETTINGS
@given(
    shape=st.tuples(st.integers(0, 5), st.integers(1, 40), st.integers(1, 40), st.integers(1, 20)),
    data=st.data(),
    scale=st.sampled_from([1.0, 1e-3, 1e3]),
    squash=st.tuples(st.floats(-5, 15), st.floats(0.05, 5)),
    as_float64=st.booleans(),
)
def test_ood_twins_agree(shape, data, scale, squash, as_float64):
    pure, compiled = _both("ood")
    batch, hidden, width, classes = shape
    values = st.floats(-1, 1, width=32)
    pooled = data.draw(hnp.arrays(np.float32, (batch, hidden), elements=values)) * np.float32(scale)
    whiten = data.draw(hnp.arrays(np.float32, (hidden, width), elements=values))
    centers = data.draw(hnp.arrays(np.float32, (classes, width), elements=values)) * np.float32(scale)
    if as_float64:  # the non-float32 path of both twins converts, and must agree too
        pooled = pooled.astype(np.float64)
    want = pure.nearest_distance(pooled, whiten, centers)
    got = compiled.nearest_distance(pooled, whiten, centers)
    assert got.dtype == want.dtype == np.float64 and got.shape == want.shape == (batch,)
    assert_close(got, want, scale=scale * scale)
    want_scores = pure.ood_scores(pooled, whiten, centers, *squash)
    got_scores = compiled.ood_scores(pooled, whiten, centers, *squash)
    assert got_scores.dtype == np.float32
    assert_close(got_scores, want_scores)
    assert ((got_scores >= 0) & (got_scores <= 1)).all()
