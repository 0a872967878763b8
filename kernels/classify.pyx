"""Logits -> probabilities, top-k, margin and entropy (compiled twin of edge_runtime/kernels/pure/classify.py).

Same rules as the pure twin (see its docstring). Each row takes two sweeps over its C logits without the
GIL and no temporaries: the first finds the max, checks finiteness and keeps the top 5 by insertion
(ties keep the lower index); the second sums exp(z - max) and the entropy term, writing `probs` if asked.
"""
cimport cython
cimport numpy as cnp
from libc.math cimport exp, isfinite, log, log1p
from libc.stdint cimport int64_t

import numpy as np

from edge_runtime.kernels.pure.classify import as_logits, check_arguments

cnp.import_array()

cdef enum:
    MAX_TOP_K = 5              # same as the pure twin's MAX_TOP_K

cdef class ClassifyResult:
    """Per-row classification statistics; every field is a NumPy array (probs may be None)."""
    cdef readonly object argmax, top_indices, top_probs, max_prob, margin, entropy, probs

    def __init__(self, argmax, top_indices, top_probs, max_prob, margin, entropy, probs):
        self.argmax = argmax
        self.top_indices = top_indices
        self.top_probs = top_probs
        self.max_prob = max_prob
        self.margin = margin
        self.entropy = entropy
        self.probs = probs

    def __repr__(self):
        return f"ClassifyResult(batch={len(self.argmax)}, k={self.top_indices.shape[1]})"

cdef inline object _empty(int ndim, cnp.npy_intp d0, cnp.npy_intp d1, int typenum):
    cdef cnp.npy_intp dims[2]
    dims[0] = d0
    dims[1] = d1
    return cnp.PyArray_EMPTY(ndim, dims, typenum, 0)

@cython.boundscheck(False)
@cython.wraparound(False)
cdef bint _row(const float* x, Py_ssize_t classes, double temperature, Py_ssize_t k, double log_c,
               int64_t* top_idx, float* top_p, float* max_p, float* margin, float* entropy,
               float* probs) noexcept nogil:
    """One row; returns False when a scaled logit is not finite. Pointers cover exactly this row."""
    cdef double vals[MAX_TOP_K]
    cdef Py_ssize_t idxs[MAX_TOP_K]
    cdef Py_ssize_t slots = classes if classes < MAX_TOP_K else MAX_TOP_K
    cdef Py_ssize_t filled = 0, pos, j, best
    cdef double z, peak, e, rest = 0.0, weighted = 0.0, total, h
    for j in range(classes):
        z = x[j] / temperature
        if not isfinite(z):
            return False
        if filled < slots:
            pos = filled
            filled += 1
        elif z > vals[slots - 1]:
            pos = slots - 1
        else:
            continue
        while pos > 0 and vals[pos - 1] < z:
            vals[pos] = vals[pos - 1]
            idxs[pos] = idxs[pos - 1]
            pos -= 1
        vals[pos] = z
        idxs[pos] = j
    peak = vals[0]
    best = idxs[0]
    for j in range(classes):
        z = x[j] / temperature
        e = exp(z - peak)
        if j != best:
            rest += e
        weighted += e * (peak - z)
    total = 1.0 + rest
    if probs != NULL:
        for j in range(classes):
            probs[j] = <float>(exp(x[j] / temperature - peak) / total)
    for j in range(k):
        top_idx[j] = idxs[j]
        top_p[j] = <float>(exp(vals[j] - peak) / total)
    max_p[0] = <float>(1.0 / total)
    if classes > 1:
        margin[0] = <float>(1.0 / total - exp(vals[1] - peak) / total)
        h = (log1p(rest) + weighted / total) / log_c
        entropy[0] = <float>(0.0 if h < 0.0 else (1.0 if h > 1.0 else h))
    else:
        margin[0] = <float>(1.0 / total)
        entropy[0] = 0.0
    return True

@cython.boundscheck(False)
@cython.wraparound(False)
def classify_logits(logits, temperature=1.0, top_k=5, full_softmax=False):
    """Fused softmax statistics for float32 (B, C) logits; see the pure twin's docstring for the rules."""
    cdef double t
    cdef Py_ssize_t kk
    if type(temperature) is float and type(top_k) is int and 1 <= <long>top_k <= MAX_TOP_K \
            and <double>temperature > 0.0 and isfinite(<double>temperature):
        t = temperature
        kk = top_k
    else:
        t, kk = check_arguments(temperature, top_k)
    cdef cnp.ndarray x
    if (cnp.PyArray_Check(logits) and cnp.PyArray_TYPE(logits) == cnp.NPY_FLOAT32
            and cnp.PyArray_NDIM(logits) == 2 and cnp.PyArray_IS_C_CONTIGUOUS(logits)
            and cnp.PyArray_DIM(logits, 1) >= 1):
        x = logits
    else:
        x = as_logits(logits)
    cdef Py_ssize_t batch = x.shape[0], classes = x.shape[1], b, bad = -1
    cdef Py_ssize_t k = kk if kk < classes else classes
    argmax = _empty(1, batch, 0, cnp.NPY_INT64)
    top_indices = _empty(2, batch, k, cnp.NPY_INT64)
    top_probs = _empty(2, batch, k, cnp.NPY_FLOAT32)
    max_prob = _empty(1, batch, 0, cnp.NPY_FLOAT32)
    margin = _empty(1, batch, 0, cnp.NPY_FLOAT32)
    entropy = _empty(1, batch, 0, cnp.NPY_FLOAT32)
    probs = _empty(2, batch, classes, cnp.NPY_FLOAT32) if full_softmax else None
    cdef const float* xd = <const float*>cnp.PyArray_DATA(x)
    cdef int64_t* am = <int64_t*>cnp.PyArray_DATA(argmax)
    cdef int64_t* ti = <int64_t*>cnp.PyArray_DATA(top_indices)
    cdef float* tp = <float*>cnp.PyArray_DATA(top_probs)
    cdef float* mp = <float*>cnp.PyArray_DATA(max_prob)
    cdef float* mg = <float*>cnp.PyArray_DATA(margin)
    cdef float* en = <float*>cnp.PyArray_DATA(entropy)
    cdef float* pr = NULL if probs is None else <float*>cnp.PyArray_DATA(probs)
    cdef double log_c = log(<double>classes)
    # every offset below is b * (row width) with b < batch: inside the arrays allocated above
    with nogil:
        for b in range(batch):
            if not _row(xd + b * classes, classes, t, k, log_c, ti + b * k, tp + b * k,
                        mp + b, mg + b, en + b, NULL if pr == NULL else pr + b * classes):
                bad = b
                break
            am[b] = ti[b * k]
    if bad >= 0:
        raise ValueError(f"logits row {bad} is not finite (after temperature scaling)")
    result = ClassifyResult.__new__(ClassifyResult)
    (<ClassifyResult>result).argmax = argmax
    (<ClassifyResult>result).top_indices = top_indices
    (<ClassifyResult>result).top_probs = top_probs
    (<ClassifyResult>result).max_prob = max_prob
    (<ClassifyResult>result).margin = margin
    (<ClassifyResult>result).entropy = entropy
    (<ClassifyResult>result).probs = probs
    return result
