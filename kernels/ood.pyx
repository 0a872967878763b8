"""Out-of-scope score from a pooled embedding (compiled twin of edge_runtime/kernels/pure/ood.py).

Same rules as the pure twin (see its docstring). Per row, without the GIL and in float64: z = x @ W as one
axpy per input value (z += x_i * W[i, :], contiguous, so the compiler vectorises it without reordering any
sum), then the squared distance to each whitened class mean with eight partial sums. The parameters stay
float32 in memory: at batch 1 the time goes to streaming W (d * r values) through the cache.
"""
cimport cython
cimport numpy as cnp
from libc.math cimport INFINITY, exp, isfinite, log
from libc.stdlib cimport free, malloc

import numpy as np

from edge_runtime.kernels.pure.ood import as_parameters, as_pooled, check_squash

cnp.import_array()

cdef extern from *:
    """
    /* Portable build, fast CPU: GCC compiles these twice (AVX2 and baseline) and picks one at load time. */
    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
    #define ER_OOD_CLONES __attribute__((target_clones("avx2", "default")))
    #else
    #define ER_OOD_CLONES
    #endif
    /* z[j] += x * w[j]: independent per j, so it vectorises with the same rounding as the scalar loop. */
    ER_OOD_CLONES static void er_axpy(double *restrict z, double x, const float *restrict w, Py_ssize_t n) {
        Py_ssize_t j;
        for (j = 0; j < n; j++) z[j] += x * (double)w[j];
    }
    /* sum_j (z[j] - c[j])^2 with eight partial sums, so the additions do not wait on each other. */
    ER_OOD_CLONES static double er_squared_distance(const double *restrict z, const float *restrict c,
                                                    Py_ssize_t n) {
        Py_ssize_t j, k;
        double part[8] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0}, d, total;
        for (j = 0; j + 8 <= n; j += 8)
            for (k = 0; k < 8; k++) {
                d = z[j + k] - (double)c[j + k];
                part[k] += d * d;
            }
        total = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
        for (; j < n; j++) {
            d = z[j] - (double)c[j];
            total += d * d;
        }
        return total;
    }
    """
    void er_axpy(double* z, double x, const float* w, Py_ssize_t n) noexcept nogil
    double er_squared_distance(const double* z, const float* c, Py_ssize_t n) noexcept nogil

cdef inline bint _is_c_float32(object array):
    return (cnp.PyArray_Check(array) and cnp.PyArray_TYPE(array) == cnp.NPY_FLOAT32
            and cnp.PyArray_NDIM(array) == 2 and cnp.PyArray_IS_C_CONTIGUOUS(array))

@cython.boundscheck(False)
@cython.wraparound(False)
cdef object _distances(pooled, whiten, centers):
    """float64 (B,) nearest-mean squared distances; the shared body of both entry points."""
    cdef cnp.ndarray x = pooled if _is_c_float32(pooled) else as_pooled(pooled)
    cdef cnp.ndarray w, c
    if (_is_c_float32(whiten) and _is_c_float32(centers) and cnp.PyArray_DIM(whiten, 0) == x.shape[1]
            and cnp.PyArray_DIM(centers, 0) >= 1 and cnp.PyArray_DIM(centers, 1) == cnp.PyArray_DIM(whiten, 1)):
        w, c = whiten, centers
    else:
        w, c = as_parameters(whiten, centers, x.shape[1])
    cdef Py_ssize_t batch = x.shape[0], hidden = x.shape[1], width = w.shape[1], classes = c.shape[0]
    cdef Py_ssize_t b, i, k, bad = -1
    cdef cnp.npy_intp dims[1]
    dims[0] = batch
    out = cnp.PyArray_EMPTY(1, dims, cnp.NPY_FLOAT64, 0)
    cdef double* result = <double*>cnp.PyArray_DATA(out)
    cdef const float* xd = <const float*>cnp.PyArray_DATA(x)
    cdef const float* wd = <const float*>cnp.PyArray_DATA(w)
    cdef const float* cd = <const float*>cnp.PyArray_DATA(c)
    cdef double* z = <double*>malloc((width + 1) * sizeof(double))
    cdef double best, distance, value
    if z == NULL:
        raise MemoryError()
    # offsets: b * hidden + i (b < batch, i < hidden) in x; i * width (+ < width) in w; k * width in c
    with nogil:
        for b in range(batch):
            for i in range(width):
                z[i] = 0.0
            for i in range(hidden):
                value = xd[b * hidden + i]
                if not isfinite(value):
                    bad = b
                    break
                er_axpy(z, value, wd + i * width, width)
            if bad >= 0:
                break
            best = INFINITY
            for k in range(classes):
                distance = er_squared_distance(z, cd + k * width, width)
                if distance < best:
                    best = distance
            result[b] = best
    free(z)
    if bad >= 0:
        raise ValueError(f"pooled row {bad} is not finite")
    return out

def nearest_distance(pooled, whiten, centers):
    """float64 (B,): squared Mahalanobis distance of each row to the nearest class mean."""
    return _distances(pooled, whiten, centers)

@cython.boundscheck(False)
@cython.wraparound(False)
def ood_scores(pooled, whiten, centers, location, scale):
    """float32 (B,) in 0..1: the nearest-class distance on the log scale the build fitted."""
    cdef double loc, sc
    loc, sc = check_squash(location, scale)
    distances = _distances(pooled, whiten, centers)
    cdef Py_ssize_t batch = distances.shape[0], b
    cdef cnp.npy_intp dims[1]
    dims[0] = batch
    out = cnp.PyArray_EMPTY(1, dims, cnp.NPY_FLOAT32, 0)
    cdef const double* d = <const double*>cnp.PyArray_DATA(distances)
    cdef float* score = <float*>cnp.PyArray_DATA(out)
    with nogil:
        for b in range(batch):
            # a distance of 0 has log -inf: exp(+inf) = inf and the score is 0, as in the twin
            score[b] = <float>(1.0 / (1.0 + exp(-(log(d[b]) - loc) / sc)))
    return out
