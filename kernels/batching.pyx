"""Padding and length bucketing (compiled twin of edge_runtime/kernels/pure/batching.py).

Same rules as the pure twin (see its docstring). Lists and tuples of Python ints are read straight
through the C API; NumPy rows are copied through typed memoryviews without the GIL.
"""
cimport cython
cimport numpy as cnp
from cpython.list cimport PyList_GET_ITEM
from cpython.long cimport PyLong_AsLongLong
from cpython.tuple cimport PyTuple_GET_ITEM
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc

import operator

import numpy as np

from edge_runtime.kernels.pure.batching import positive_int

cnp.import_array()

cdef str _INT_KINDS = "iub"

cdef object _int_array(object seq, str what, Py_ssize_t index):
    """A NumPy int64 view/copy of a non-list row prefix (the pure twin's checks)."""
    row = np.asarray(seq)
    if row.ndim != 1:
        raise ValueError(f"{what}[{index}] must be a flat sequence of ints, got {row.ndim}-D")
    if row.size and row.dtype.kind not in _INT_KINDS:
        raise TypeError(f"{what}[{index}] must hold integers, got {row.dtype}")
    return row.astype(np.int64, copy=False)

@cython.boundscheck(False)
@cython.wraparound(False)
cdef int _copy_row(object seq, Py_ssize_t n, int64_t* out, str what, Py_ssize_t index) except -1:
    """Copy the first n items of one row to out[0:n]; n <= len(seq) is checked by the caller."""
    cdef Py_ssize_t j
    cdef const int64_t[:] view
    cdef object item
    cdef bint is_list = type(seq) is list
    if is_list or type(seq) is tuple:
        for j in range(n):
            item = <object>PyList_GET_ITEM(seq, j) if is_list else <object>PyTuple_GET_ITEM(seq, j)
            if type(item) is not int:
                break                       # anything else goes the pure twin's way below
            out[j] = PyLong_AsLongLong(item)
        else:
            return 0
    view = _int_array(seq[:n], what, index)
    with nogil:
        for j in range(n):
            out[j] = view[j]
    return 0

@cython.boundscheck(False)
@cython.wraparound(False)
def pad_batch(sequences, max_length, pad_id=0, type_ids=None):
    """Pad/truncate `sequences` to int64 `(input_ids, attention_mask, token_type_ids|None)` of shape (B, T)."""
    cdef Py_ssize_t limit = positive_int(max_length, "max_length")
    cdef int64_t pad = operator.index(pad_id)
    cdef Py_ssize_t batch = len(sequences)
    cdef Py_ssize_t width = 0, b, j, n
    cdef cnp.npy_intp dims[2]
    cdef int64_t* ids_data
    cdef int64_t* mask_data
    cdef int64_t* types_data = NULL
    cdef int64_t* row
    cdef Py_ssize_t* lengths
    if type_ids is not None and len(type_ids) != batch:
        raise ValueError(f"type_ids has {len(type_ids)} rows, sequences has {batch}")
    lengths = <Py_ssize_t*>malloc((batch + 1) * sizeof(Py_ssize_t))
    if lengths == NULL:
        raise MemoryError()
    try:
        for b in range(batch):
            seq = sequences[b]
            n = len(seq)
            if type_ids is not None and len(type_ids[b]) != n:
                raise ValueError(f"type_ids[{b}] has {len(type_ids[b])} items, sequences[{b}] has {n}")
            if n > limit:
                n = limit
            lengths[b] = n
            if n > width:
                width = n
        dims[0] = batch
        dims[1] = width
        input_ids = cnp.PyArray_EMPTY(2, dims, cnp.NPY_INT64, 0)
        attention_mask = cnp.PyArray_ZEROS(2, dims, cnp.NPY_INT64, 0)
        ids_data = <int64_t*>cnp.PyArray_DATA(input_ids)
        mask_data = <int64_t*>cnp.PyArray_DATA(attention_mask)
        token_type_ids = None
        if type_ids is not None:
            token_type_ids = cnp.PyArray_ZEROS(2, dims, cnp.NPY_INT64, 0)
            types_data = <int64_t*>cnp.PyArray_DATA(token_type_ids)
        for b in range(batch):
            n = lengths[b]
            row = ids_data + b * width
            _copy_row(sequences[b], n, row, "sequences", b)
            for j in range(n, width):
                row[j] = pad
            row = mask_data + b * width
            for j in range(n):
                row[j] = 1
            if types_data != NULL:
                _copy_row(type_ids[b], n, types_data + b * width, "type_ids", b)
    finally:
        free(lengths)
    return input_ids, attention_mask, token_type_ids

@cython.boundscheck(False)
@cython.wraparound(False)
def length_buckets(lengths, max_batch, max_tokens):
    """Sort by length and cut into buckets: int64 `(order, boundaries, inverse)`."""
    cdef int64_t batch_cap = positive_int(max_batch, "max_batch")
    cdef int64_t token_cap = positive_int(max_tokens, "max_tokens")
    values = np.asarray(lengths)
    if values.ndim != 1:
        raise ValueError(f"lengths must be 1-D, got {values.ndim}-D")
    if values.size and values.dtype.kind not in _INT_KINDS:
        raise TypeError(f"lengths must hold integers, got {values.dtype}")
    values = np.ascontiguousarray(values, dtype=np.int64)
    cdef const int64_t[::1] vals = values
    cdef Py_ssize_t count = vals.shape[0], i, k = 1
    for i in range(count):
        if vals[i] < 0:
            raise ValueError(f"lengths must be >= 0, got {vals[i]} at index {int(values.argmin())}")
    order = np.argsort(values, kind="stable").astype(np.int64, copy=False)
    boundaries = np.empty(count + 1, dtype=np.int64)
    inverse = np.empty(count, dtype=np.int64)
    cdef const int64_t[::1] order_v = order
    cdef int64_t[::1] bounds_v = boundaries
    cdef int64_t[::1] inverse_v = inverse
    cdef int64_t start = 0, size
    with nogil:
        bounds_v[0] = 0
        for i in range(count):
            inverse_v[order_v[i]] = i        # order is a permutation of 0..count-1
        for i in range(1, count):
            size = i - start + 1
            # size * longest <= max_tokens, written so it cannot overflow
            if size > batch_cap or vals[order_v[i]] > token_cap // size:
                bounds_v[k] = i
                k += 1
                start = i
        if count:
            bounds_v[k] = count
            k += 1
    return order, boundaries[:k].copy(), inverse
