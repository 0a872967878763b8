"""Sentence-embedding pooling (compiled twin of edge_runtime/kernels/pure/pooling.py).

Same rules as the pure twin (see its docstring). Masked tokens are skipped, not multiplied by zero, and
every row accumulates into one float64 buffer of H without the GIL.
"""
cimport cython
cimport numpy as cnp
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc

import numpy as np

from edge_runtime.kernels.pure.pooling import as_float32, as_mask

cnp.import_array()

cdef extern from *:
    """
    /* Portable build, fast CPU: GCC compiles the float32 -> float64 accumulation twice (AVX2 and baseline)
       and picks one at load time. Adding four rows per sweep keeps the sequential order per element. */
    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
    #define ER_CLONES __attribute__((target_clones("avx2", "default")))
    #else
    #define ER_CLONES
    #endif
    ER_CLONES static void er_add_rows(double *restrict acc, const float *restrict r0,
                                      const float *restrict r1, const float *restrict r2,
                                      const float *restrict r3, int nrows, Py_ssize_t width) {
        Py_ssize_t h;
        if (nrows == 4) {
            for (h = 0; h < width; h++) {
                double a = acc[h];
                a += r0[h]; a += r1[h]; a += r2[h]; a += r3[h];
                acc[h] = a;
            }
        } else {
            for (h = 0; h < width; h++) acc[h] += r0[h];
        }
    }
    /* Sum of squares in NumPy's pairwise order: eight independent partial sums instead of one long
       dependency chain (and the same rounding as the twin's np.sum in the common cases). */
    static double er_sum_squares(const double *a, Py_ssize_t n) {
        Py_ssize_t i, j;
        double r[8], res;
        if (n < 8) {
            res = 0.0;
            for (i = 0; i < n; i++) res += a[i] * a[i];
            return res;
        }
        if (n <= 128) {
            for (j = 0; j < 8; j++) r[j] = a[j] * a[j];
            for (i = 8; i < n - (n % 8); i += 8)
                for (j = 0; j < 8; j++) r[j] += a[i + j] * a[i + j];
            res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
            for (; i < n; i++) res += a[i] * a[i];
            return res;
        }
        i = n / 2;
        i -= i % 8;
        return er_sum_squares(a, i) + er_sum_squares(a + i, n - i);
    }
    /* out = acc * (1 / count), then times 1 / its L2 norm if asked (a zero vector stays zero). */
    ER_CLONES static void er_finish(double *restrict acc, Py_ssize_t width, double count, int normalize,
                                    float *restrict out) {
        Py_ssize_t h;
        double scale = 1.0 / count, norm = 0.0;
        for (h = 0; h < width; h++) acc[h] = acc[h] * scale;
        if (normalize) {
            norm = sqrt(er_sum_squares(acc, width));
            scale = norm > 0.0 ? 1.0 / norm : 0.0;
            for (h = 0; h < width; h++) acc[h] = acc[h] * scale;
        }
        for (h = 0; h < width; h++) out[h] = (float)acc[h];
    }
    """
    void er_finish(double* acc, Py_ssize_t width, double count, int normalize, float* out) noexcept nogil
    void er_add_rows(double* acc, const float* r0, const float* r1, const float* r2, const float* r3,
                     int nrows, Py_ssize_t width) noexcept nogil

cdef inline bint _is_c_float32(object array, int ndim):
    return (cnp.PyArray_Check(array) and cnp.PyArray_TYPE(array) == cnp.NPY_FLOAT32
            and cnp.PyArray_NDIM(array) == ndim and cnp.PyArray_IS_C_CONTIGUOUS(array))

cdef inline object _out(Py_ssize_t rows, Py_ssize_t width):
    cdef cnp.npy_intp dims[2]
    dims[0] = rows
    dims[1] = width
    return cnp.PyArray_EMPTY(2, dims, cnp.NPY_FLOAT32, 0)

@cython.boundscheck(False)
@cython.wraparound(False)
def mean_pool(hidden, mask, normalize=False):
    """Masked mean over tokens of float32 (B, T, H) -> float32 (B, H)."""
    cdef cnp.ndarray states = hidden if _is_c_float32(hidden, 3) else as_float32(hidden, 3, "hidden")
    cdef Py_ssize_t batch = states.shape[0], tokens = states.shape[1], width = states.shape[2]
    cdef cnp.ndarray keep
    if (cnp.PyArray_Check(mask) and cnp.PyArray_TYPE(mask) == cnp.NPY_INT64 and cnp.PyArray_NDIM(mask) == 2
            and cnp.PyArray_IS_C_CONTIGUOUS(mask) and cnp.PyArray_DIM(mask, 0) == batch
            and cnp.PyArray_DIM(mask, 1) == tokens):
        keep = mask
    else:
        keep = np.ascontiguousarray(as_mask(mask, batch, tokens), dtype=np.int64)
    cdef const float* data = <const float*>cnp.PyArray_DATA(states)
    cdef const int64_t* flags = <const int64_t*>cnp.PyArray_DATA(keep)
    out = _out(batch, width)
    cdef float* result = <float*>cnp.PyArray_DATA(out)
    cdef bint unit = normalize
    cdef double* acc = <double*>malloc((width + 1) * sizeof(double))
    cdef Py_ssize_t b, t, h, count
    cdef const float* rows[4]
    if acc == NULL:
        raise MemoryError()
    # offsets are (b * tokens + t) * width + h with b < batch, t < tokens, h < width: inside `states`
    with nogil:
        for b in range(batch):
            for h in range(width):
                acc[h] = 0.0
            count = 0
            for t in range(tokens):
                if flags[b * tokens + t] != 0:
                    rows[count % 4] = data + (b * tokens + t) * width
                    count += 1
                    if count % 4 == 0:
                        er_add_rows(acc, rows[0], rows[1], rows[2], rows[3], 4, width)
            for t in range(count % 4):      # the last < 4 kept rows, in order
                er_add_rows(acc, rows[t], NULL, NULL, NULL, 1, width)
            er_finish(acc, width, <double>(count if count > 0 else 1), unit, result + b * width)
    free(acc)
    return out

@cython.boundscheck(False)
@cython.wraparound(False)
cdef object _normalize_rows(const float* data, Py_ssize_t rows, Py_ssize_t width, Py_ssize_t stride):
    """float32 (rows, width) copy of rows `data + r * stride`, each divided by its L2 norm."""
    out = _out(rows, width)
    cdef float* result = <float*>cnp.PyArray_DATA(out)
    cdef double* acc = <double*>malloc((width + 1) * sizeof(double))
    cdef Py_ssize_t r, h
    if acc == NULL:
        raise MemoryError()
    with nogil:
        for r in range(rows):
            for h in range(width):
                acc[h] = data[r * stride + h]
            er_finish(acc, width, 1.0, True, result + r * width)
    free(acc)
    return out

def cls_pool(hidden, normalize=False):
    """Token 0 of every row of float32 (B, T, H) -> float32 (B, H)."""
    cdef cnp.ndarray states = hidden if _is_c_float32(hidden, 3) else as_float32(hidden, 3, "hidden")
    cdef Py_ssize_t batch = states.shape[0], tokens = states.shape[1], width = states.shape[2]
    if tokens < 1:
        raise ValueError("hidden has no tokens to pool")
    if not normalize:
        return states[:, 0, :].copy()
    return _normalize_rows(<const float*>cnp.PyArray_DATA(states), batch, width, tokens * width)

def l2_normalize(x):
    """Divide every vector along the last axis by its L2 norm; zero vectors stay zero."""
    values = np.asarray(x)
    if values.dtype.kind not in "fiu":
        raise TypeError(f"x must be a real numeric array, got {values.dtype}")
    if values.ndim < 1:
        raise ValueError("x must have at least one axis")
    cdef cnp.ndarray flat = np.ascontiguousarray(values, dtype=np.float32)
    cdef Py_ssize_t width = flat.shape[flat.ndim - 1]
    cdef Py_ssize_t rows = flat.size // width if width else 0
    if width == 0:
        return flat.copy()
    out = _normalize_rows(<const float*>cnp.PyArray_DATA(flat), rows, width, width)
    return out.reshape(values.shape)
