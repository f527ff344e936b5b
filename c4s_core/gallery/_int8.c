/* The int8 gallery kernel: each query's best m rows by quantised score, in one
 * pass over the codes (c4s_core/gallery/kernel.py calls it through ctypes, one
 * call per thread and row range; ctypes releases the GIL).
 *
 * score(j, i) = scales[i] * sum_t q[j][t] * codes[i][t], summed exactly in
 * int32 (the caller picks q's int16 range so that d * 127 * max|q| < 2^31).
 * A fused top-m (a min-heap per query) replaces a [Q, n] score matrix and a
 * separate selection pass, which cost as much as the scoring itself at 1M rows.
 * On x86-64 gcc builds an AVX2 clone (int8 -> int16 widening, vpmaddwd) picked
 * at load time, so one build runs on any x86-64 CPU.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define C4S_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define C4S_CLONES
#endif

static inline void sift_down(float *s, int64_t *r, size_t m, size_t i) {
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= m) return;
        if (c + 1 < m && s[c + 1] < s[c]) c++;
        if (s[i] <= s[c]) return;
        float ts = s[i]; s[i] = s[c]; s[c] = ts;
        int64_t tr = r[i]; r[i] = r[c]; r[c] = tr;
        i = c;
    }
}

/* Rows [lo, hi) of codes [n, d]; q [nq, d]; top_s / top_r [nq, m]: each
 * query's best m (unordered; -inf / -1 where the range holds fewer rows). */
C4S_CLONES
void c4s_int8_topm(const int8_t *codes, const float *scales, int64_t lo, int64_t hi, int64_t d,
                   const int16_t *q, int64_t nq, int64_t m, float *top_s, int64_t *top_r) {
    for (int64_t k = 0; k < nq * m; k++) {
        top_s[k] = -INFINITY;
        top_r[k] = -1;
    }
    for (int64_t i = lo; i < hi; i++) {
        const int8_t *row = codes + i * d;
        for (int64_t j = 0; j < nq; j++) {
            const int16_t *qj = q + j * d;
            int32_t acc = 0;
            for (int64_t t = 0; t < d; t++) acc += (int32_t)qj[t] * (int32_t)row[t];
            float s = (float)acc * scales[i];
            float *hs = top_s + j * m;
            if (s > hs[0]) {
                int64_t *hr = top_r + j * m;
                hs[0] = s;
                hr[0] = i;
                sift_down(hs, hr, (size_t)m, 0);
            }
        }
    }
}

/* An importable module, so that setuptools builds and installs it like any
 * extension; the kernel itself is reached through ctypes. */
static struct PyModuleDef c4s_int8_module = {PyModuleDef_HEAD_INIT, "_int8", "c4s int8 gallery kernel", -1, NULL};

PyMODINIT_FUNC PyInit__int8(void) { return PyModule_Create(&c4s_int8_module); }
