"""Token logits -> entity spans (compiled twin of edge_runtime/kernels/pure/tokencls.py).

Same rules as the pure twin (see its docstring). Each row runs without the GIL: token scoring, word
aggregation and B-/I- grouping are one streaming state machine writing (start, end, label, score) into
C buffers; the tuples are built afterwards.
"""
cimport cython
cimport numpy as cnp
from libc.math cimport exp, isfinite
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc

import numpy as np

from edge_runtime.kernels.pure.tokencls import STRATEGIES, check_inputs

cnp.import_array()

cdef enum Strategy:
    NONE = 0
    SIMPLE = 1
    FIRST = 2
    MAX = 3
    AVERAGE = 4

cdef struct Decoder:
    # fixed for the call
    int strategy
    bint strict
    Py_ssize_t labels
    const unsigned char* begins     # 1 for a B- tag
    const int64_t* types            # entity type id per tag, -1 for O
    double* exps                    # L scratch: exp(z - max) of the current token
    double* sums                    # L scratch: summed probabilities of the current word
    double last_total               # sum of d.exps
    # current word (word strategies)
    bint in_word
    int64_t word_id, word_start, word_end, word_label, word_count
    double word_score
    # open entity
    bint open
    int64_t open_type, open_start, open_end, open_count
    double open_total
    # output of the current row
    int64_t* out_start
    int64_t* out_end
    int64_t* out_label
    double* out_score
    Py_ssize_t out_count

cdef inline void _emit(Decoder* d, int64_t start, int64_t end, int64_t label, double score) noexcept nogil:
    # at most one entity per token: out_count < T, the buffers' length
    d.out_start[d.out_count] = start
    d.out_end[d.out_count] = end
    d.out_label[d.out_count] = label
    d.out_score[d.out_count] = score
    d.out_count += 1

cdef inline void _close(Decoder* d) noexcept nogil:
    if d.open:
        _emit(d, d.open_start, d.open_end, d.open_type, d.open_total / d.open_count)
        d.open = False

cdef void _unit(Decoder* d, int64_t label, double score, int64_t start, int64_t end) noexcept nogil:
    """Rules 4 and 5: one unit into the grouping state machine."""
    cdef int64_t kind = d.types[label]
    if d.strategy == NONE:
        if kind >= 0:
            _emit(d, start, end, label, score)
        return
    if kind >= 0 and d.open and kind == d.open_type and not d.begins[label]:
        d.open_end = end
        d.open_total += score
        d.open_count += 1
        return
    _close(d)
    if kind >= 0 and (d.begins[label] or not d.strict):
        d.open = True
        d.open_type = kind
        d.open_start = start
        d.open_end = end
        d.open_total = score
        d.open_count = 1

cdef inline double _score(Decoder* d, const float* row, double peak) noexcept nogil:
    """Rule 2: fills d.exps and d.last_total, returns the token's score 1 / sum."""
    cdef Py_ssize_t j
    cdef double total = 0.0
    for j in range(d.labels):
        d.exps[j] = exp(<double>row[j] - peak)
        total += d.exps[j]
    d.last_total = total
    return 1.0 / total

cdef void _flush_word(Decoder* d) noexcept nogil:
    cdef Py_ssize_t j
    cdef double best
    if not d.in_word:
        return
    if d.strategy == AVERAGE:
        d.word_label = 0
        best = d.sums[0] / d.word_count
        for j in range(1, d.labels):
            if d.sums[j] / d.word_count > best:
                best = d.sums[j] / d.word_count
                d.word_label = j
        d.word_score = best
    _unit(d, d.word_label, d.word_score, d.word_start, d.word_end)
    d.in_word = False

@cython.boundscheck(False)
@cython.wraparound(False)
cdef Py_ssize_t _decode_row(Decoder* d, const float* logits, const int64_t* spans, const int64_t* words,
                            Py_ssize_t tokens) noexcept nogil:
    """Decode one row into d.out_*; returns -1, or the index of a token with a non-finite logit."""
    cdef Py_ssize_t t, j, labels = d.labels
    cdef const float* row
    cdef int64_t wid, best
    cdef double z, peak, score
    d.out_count = 0
    d.open = False
    d.in_word = False
    for t in range(tokens):
        wid = words[t]
        if wid < 0:
            _flush_word(d)
            _close(d)
            continue
        row = logits + t * labels
        best = 0
        peak = row[0]
        for j in range(labels):
            z = row[j]
            if not isfinite(z):
                return t
            if z > peak:
                peak = z
                best = j
        if d.strategy <= SIMPLE:
            if d.types[best] >= 0:          # an O token's score is never read
                _unit(d, best, _score(d, row, peak), spans[2 * t], spans[2 * t + 1])
            else:
                _unit(d, best, 0.0, spans[2 * t], spans[2 * t + 1])
            continue
        if d.in_word and wid != d.word_id:
            _flush_word(d)
        if not d.in_word:
            d.in_word = True
            d.word_id = wid
            d.word_start = spans[2 * t]
            d.word_count = 0
            d.word_label = best
            # "first" reads only the first token's score, and only when it is not O
            d.word_score = 0.0 if d.strategy == FIRST and d.types[best] < 0 else _score(d, row, peak)
            if d.strategy == AVERAGE:
                for j in range(labels):
                    d.sums[j] = 0.0
        elif d.strategy != FIRST:
            score = _score(d, row, peak)
            if d.strategy == MAX and score > d.word_score:
                d.word_label = best
                d.word_score = score
        if d.strategy == AVERAGE:
            for j in range(labels):
                d.sums[j] += d.exps[j] / d.last_total
        d.word_count += 1
        d.word_end = spans[2 * t + 1]
    _flush_word(d)
    _close(d)
    return -1

def decode_entities(logits, offsets, word_ids, labels, strategy="simple", scheme="IOB2"):
    """Per row, the list of (start, end, label, score) tuples; see the pure twin's docstring for the rules."""
    scores, spans, words, tags, begins, types = check_inputs(logits, offsets, word_ids, labels, strategy, scheme)
    cdef Py_ssize_t batch = scores.shape[0], tokens = scores.shape[1], count = scores.shape[2], b, i, bad
    kinds = {}
    type_ids = np.array([-1 if kind == "O" else kinds.setdefault(kind, len(kinds)) for kind in types],
                        dtype=np.int64)
    kind_names = list(kinds)
    begin_flags = np.array(begins, dtype=np.uint8)
    cdef const float[:, :, ::1] logits_v = scores
    cdef const int64_t[:, :, ::1] spans_v = spans
    cdef const int64_t[:, ::1] words_v = words
    cdef const unsigned char[::1] begins_v = begin_flags
    cdef const int64_t[::1] types_v = type_ids
    cdef Decoder d
    d.strategy = STRATEGIES.index(strategy)
    d.strict = scheme == "IOB2"
    d.labels = count
    d.begins = &begins_v[0]
    d.types = &types_v[0]
    cdef int64_t[:, ::1] ints = np.empty((3, tokens + 1), dtype=np.int64)
    cdef double[::1] doubles = np.empty(2 * count + tokens + 1, dtype=np.float64)
    d.exps = &doubles[0]
    d.sums = &doubles[count]
    d.out_score = &doubles[2 * count]
    d.out_start = &ints[0, 0]
    d.out_end = &ints[1, 0]
    d.out_label = &ints[2, 0]
    names = tags if d.strategy == NONE else kind_names
    result = []
    for b in range(batch):
        if tokens == 0:
            result.append([])
            continue
        with nogil:
            bad = _decode_row(&d, &logits_v[b, 0, 0], &spans_v[b, 0, 0], &words_v[b, 0], tokens)
        if bad >= 0:
            raise ValueError(f"logits row {b} token {bad} is not finite")
        result.append([(d.out_start[i], d.out_end[i], names[d.out_label[i]], d.out_score[i])
                       for i in range(d.out_count)])
    return result
