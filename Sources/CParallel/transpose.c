// A 16-row transpose for weight packing, written once with GCC/Clang vector extensions: on x86-64
// with AVX-512 each shuffle is one vpermt2ps, with AVX2 two, on aarch64 a few NEON permutes.
#include "cparallel.h"
#include <string.h>

typedef float sal_v16 __attribute__((vector_size(64)));

static inline sal_v16 load16(const float *p) { sal_v16 v; memcpy(&v, p, sizeof v); return v; }
static inline void store16(float *p, sal_v16 v) { memcpy(p, &v, sizeof v); }

// One stage of the block-swap transpose: rows i and i + s (bit s of i clear) exchange the elements
// whose column has bit s set with those of the other row whose column has it clear, i.e. bit s of the
// row index trades places with bit s of the column index. Four stages (s = 8, 4, 2, 1) transpose.
#define SAL_STAGE(s, LO, HI)                                                   \
    for (int i = 0; i < 16; i++) {                                             \
        if (i & (s)) continue;                                                 \
        sal_v16 a = r[i], b = r[i + (s)];                                      \
        r[i] = __builtin_shufflevector(a, b, LO);                              \
        r[i + (s)] = __builtin_shufflevector(a, b, HI);                        \
    }

// Lane indices (0-15: row i, 16-31: row i + s) of row i's and row i + s's new elements at stage s.
#define SAL_LO8 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23
#define SAL_HI8 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31
#define SAL_LO4 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27
#define SAL_HI4 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31
#define SAL_LO2 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29
#define SAL_HI2 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31
#define SAL_LO1 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30
#define SAL_HI1 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31

void sal_transpose16(const float *src, long rowStride, long cols, float *dst) {
    long m = 0;
    for (; m + 16 <= cols; m += 16) {
        sal_v16 r[16];
        for (int i = 0; i < 16; i++) r[i] = load16(src + i * rowStride + m);
        SAL_STAGE(8, SAL_LO8, SAL_HI8)
        SAL_STAGE(4, SAL_LO4, SAL_HI4)
        SAL_STAGE(2, SAL_LO2, SAL_HI2)
        SAL_STAGE(1, SAL_LO1, SAL_HI1)
        for (int i = 0; i < 16; i++) store16(dst + (m + i) * 16, r[i]);
    }
    for (; m < cols; m++)
        for (int j = 0; j < 16; j++) dst[m * 16 + j] = src[j * rowStride + m];
}
