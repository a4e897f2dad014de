/* The compiled direct-convolution core of convcli (module convcli.engine._ccore).
 *
 * NHWC float32 in and out, no im2col. For each output row, every block of PX output
 * pixels keeps PX vectors of VF output maps in registers and accumulates, tap by tap and
 * channel by channel, one broadcast input value times one vector of packed weights
 * (maps innermost). Bias starts the sums; the activation runs on the finished row while
 * it is in cache; valid pooling with stride = size reduces finished rows into the pooled
 * row, so the un-pooled map never reaches memory.
 *
 * Borders: a row (column) of the padded image maps to a row (column) of the input, or to
 * -1 for a zero (the Python wrapper builds these maps with numpy.pad, so every border
 * mode means what numpy's means). Columns whose taps all lie inside the image run the
 * register-blocked loop; the few border columns run one pixel at a time through the map,
 * adding the same products in the same order (a zero tap is skipped).
 *
 * Each output pixel's sum is formed in one fixed order whatever rows a call computes, so
 * the bits of a band do not depend on how the image is cut into bands or threads.
 *
 * The vector types are GCC's vector extensions; the row kernel is compiled for AVX-512,
 * AVX2+FMA and the baseline in one binary (target_clones, chosen at load time).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

typedef float v1 __attribute__((vector_size(4), aligned(4)));
typedef float v2 __attribute__((vector_size(8), aligned(4)));
typedef float v4 __attribute__((vector_size(16), aligned(4)));
typedef float v8 __attribute__((vector_size(32), aligned(4)));
typedef float v16 __attribute__((vector_size(64), aligned(4)));
typedef int vi16 __attribute__((vector_size(64), aligned(4)));
typedef int vi8 __attribute__((vector_size(32), aligned(4)));
typedef int vi4 __attribute__((vector_size(16), aligned(4)));

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#define MULTI_ISA 1
#define TARGET(t) __attribute__((target(t)))
#else
#define MULTI_ISA 0
#define TARGET(t)
#endif

#define INLINE static inline __attribute__((always_inline))
#if defined(__x86_64__) || defined(__i386__)
#define STORE_FENCE() __builtin_ia32_sfence()
#else
#define STORE_FENCE() __sync_synchronize()
#endif

/* Largest pixel block of the expand kernel over all builds (columns an expanded row keeps past ow). */
#define MAX_EXPAND_PIXELS 128
/* Largest number of vectors in one expand block over all builds. */
#define MAX_EXPAND_VECTORS 8

enum { ACT_NONE = 0, ACT_RELU, ACT_LEAKY, ACT_SIGMOID, ACT_TANH, ACT_ABS };
enum { POOL_NONE = 0, POOL_MAX, POOL_AVG };
enum { MODE_BROADCAST = 0, MODE_EXPAND = 1, MODE_GATHER = 2, MODE_PLANAR = 3 };

typedef struct {
    const float *x;       /* H x W x C */
    int H, W, C;
    const float *w;       /* packed weights, see convcli/engine/ccore.py */
    const float *bias;    /* nb * vf */
    const int32_t *rowmap, *colmap;  /* padded row/column -> input row/column, or -1 */
    Py_ssize_t ncolmap;
    int kh, kw, sh, sw, dh, dw;
    int ow, nmaps, vf, depthwise, mult; /* mult: depthwise multiplier M (map = c*M + m) */
    int left;
    int mode;             /* MODE_* */
    int act;
    float slope;
    int ix0, ix1;         /* output columns whose taps all lie inside the image */
    /* MODE_EXPAND: per padded input row, planes of (phase, column, vf lanes) values */
    int nb, nplanes, ncol;
    int bc0, bc1;          /* columns (per phase) the expanded rows hold now: the tile's */
    int ox0, ox1;          /* output columns computed now (a tile of the row, or all of it) */
    int tile;              /* MODE_EXPAND without pooling: output columns per tile */
    size_t plane, rowsize; /* floats per plane, per expanded row */
    float *ring;           /* nslots expanded rows, tagged by padded row */
    int *tags;
    int nslots;
    int joff[64];          /* MODE_EXPAND: offset of tap column j in an expanded row (kw <= 64) */
    int cidx[16];          /* MODE_EXPAND, one block of fewer maps than lanes: lanes to keep, in order */
    int nonfinite;         /* set when a finished value is Inf or NaN (numpy's overflow warning) */
    int prefetch;          /* MODE_BROADCAST: prefetch each block's next input values (pooled tiles) */
    /* MODE_PLANAR with a column stride: permutes of (phase, channel) o's 16 values out of
       the pair m of loaded vectors, and of merging them (see expanded_row) */
    vi16 pick[8][4], merge[8][4];
} Conv;

/* ------------------------------------------------------------------ per-thread scratch */

/* Each thread keeps its scratch (up to SCRATCH_KEEP_BYTES a slot) from one call to the next.
 * Allocated per call (per band), a buffer above the allocator's mmap threshold came back as
 * fresh pages that the kernel zero-filled every time. Larger scratch is allocated for the
 * call and freed by scratch_done. A thread's kept scratch is freed when the thread ends (the
 * engine's pool is replaced when its size changes). */
#define SCRATCH_KEEP_BYTES ((size_t)4 << 20)
enum { SCRATCH_RING = 0, SCRATCH_POOL = 1 };
typedef struct {
    float *ptr[2];
    size_t cap[2];
} Scratch;
static pthread_key_t scratch_key;
static int scratch_key_ok;

static void scratch_free(void *p) {
    Scratch *s = (Scratch *)p;
    free(s->ptr[0]);
    free(s->ptr[1]);
    free(s);
}

static float *scratch_get(int slot, size_t bytes) {
    bytes = (bytes + 63) / 64 * 64;
    Scratch *s = scratch_key_ok ? (Scratch *)pthread_getspecific(scratch_key) : NULL;
    if (!s && scratch_key_ok && bytes <= SCRATCH_KEEP_BYTES) {
        s = (Scratch *)calloc(1, sizeof *s);
        if (s && pthread_setspecific(scratch_key, s) != 0) {
            free(s);
            s = NULL;
        }
    }
    if (!s || bytes > SCRATCH_KEEP_BYTES) return (float *)aligned_alloc(64, bytes);
    if (s->cap[slot] < bytes) {
        free(s->ptr[slot]);
        s->ptr[slot] = (float *)aligned_alloc(64, bytes);
        s->cap[slot] = s->ptr[slot] ? bytes : 0;
    }
    return s->ptr[slot];
}

static void scratch_done(int slot, float *p) {
    Scratch *s = scratch_key_ok ? (Scratch *)pthread_getspecific(scratch_key) : NULL;
    if (p && (!s || p != s->ptr[slot])) free(p);
}

/* ------------------------------------------------------------------ register blocks */

/* MODE_BROADCAST (dense, many maps): PX pixels from output column ox (interior), maps
 * [b*VF, b*VF + VF). Each tap's input value is broadcast against a vector of VF weights. */
#define DENSE_BLOCK(VT, VF, PX, PS)                                                                \
    INLINE void dense_##VF##_##PX##_##PS(const Conv *k, const float *const *rows, int ox, int b,   \
                                         float *dst) {                                             \
        VT acc[PX];                                                                                \
        VT bv;                                                                                     \
        memcpy(&bv, k->bias + (size_t)b * VF, sizeof bv);                                          \
        for (int p = 0; p < PX; p++) acc[p] = (VT){0};                                             \
        const int C = k->C, kw = k->kw;                                                            \
        /* PS: the pixel step sw*C when fixed at compile time (plain displacements, no index     \
           registers: Intel splits an indexed broadcast-FMA into two uops), 0 when variable */   \
        const size_t pstep = PS ? (size_t)PS : (size_t)k->sw * C;                                  \
        const float *wb = k->w + (size_t)b * k->kh * kw * C * VF;                                  \
        if (k->dw == 1) { /* a tap row's (j, c) values are one contiguous run */                   \
            const int run = kw * C;                                                                \
            for (int i = 0; i < k->kh; i++) {                                                      \
                const float *r = rows[i];                                                          \
                if (!r) continue;                                                                  \
                const float *restrict xp = r + (size_t)(ox * k->sw - k->left) * C;                 \
                const float *restrict wt = wb + (size_t)i * run * VF;                              \
                /* pooled tiles (short runs of each row, which the hardware prefetchers do not     \
                   follow): the next block's values of this row into L1 now, or its first loads  \
                   wait on L2 at every row of every block (W4 on one core: 43-44 -> 39-41 ms;    \
                   whole rows, as W2's, run slower with it: 87 -> 92-107 ms) */                   \
                if (PS && k->prefetch) for (int o = 0; o < PX * (int)pstep; o += 16)               \
                    __builtin_prefetch(xp + PX * pstep + run + o, 0, 3);                           \
                for (int t = 0; t < run; t++) {                                                    \
                    VT wv;                                                                         \
                    memcpy(&wv, wt + (size_t)t * VF, sizeof wv);                                   \
                    for (int p = 0; p < PX; p++) acc[p] += xp[p * pstep + t] * wv;                 \
                }                                                                                  \
            }                                                                                      \
        } else {                                                                                   \
            for (int i = 0; i < k->kh; i++) {                                                      \
                const float *r = rows[i];                                                          \
                if (!r) continue;                                                                  \
                for (int j = 0; j < kw; j++) {                                                     \
                    const float *restrict xp = r + (size_t)(ox * k->sw + j * k->dw - k->left) * C; \
                    const float *restrict wt = wb + (size_t)(i * kw + j) * C * VF;                 \
                    for (int c = 0; c < C; c++) {                                                  \
                        VT wv;                                                                     \
                        memcpy(&wv, wt + (size_t)c * VF, sizeof wv);                               \
                        for (int p = 0; p < PX; p++) acc[p] += xp[p * pstep + c] * wv;             \
                    }                                                                              \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        const int f0 = b * VF;                                                                     \
        const int n = k->nmaps - f0 < VF ? k->nmaps - f0 : VF;                                     \
        for (int p = 0; p < PX; p++) {                                                             \
            float *o = dst + (size_t)(ox + p) * k->nmaps + f0;                                     \
            acc[p] += bv; /* the sum first, then the bias, as the numpy path adds them */          \
            if (n == VF) memcpy(o, &acc[p], sizeof(VT));                                           \
            else memcpy(o, &acc[p], (size_t)n * sizeof(float));                                    \
        }                                                                                          \
    }

/* One border pixel of MODE_BROADCAST: taps through the column map, zero taps skipped
 * (the same products in the same order as the blocks add). */
#define DENSE_EDGE(VT, VF)                                                                         \
    INLINE void dense_edge_##VF(const Conv *k, const float *const *rows, int ox, int b,            \
                                float *dst) {                                                      \
        VT acc = {0}, bv;                                                                          \
        memcpy(&bv, k->bias + (size_t)b * VF, sizeof bv);                                          \
        const int C = k->C, kw = k->kw;                                                            \
        const float *wb = k->w + (size_t)b * k->kh * kw * C * VF;                                  \
        for (int i = 0; i < k->kh; i++) {                                                          \
            const float *r = rows[i];                                                              \
            if (!r) continue;                                                                      \
            for (int j = 0; j < kw; j++) {                                                         \
                const int col = k->colmap[ox * k->sw + j * k->dw];                                 \
                if (col < 0) continue;                                                             \
                const float *xp = r + (size_t)col * C;                                             \
                const float *wt = wb + (size_t)(i * kw + j) * C * VF;                              \
                for (int c = 0; c < C; c++) {                                                      \
                    VT wv;                                                                         \
                    memcpy(&wv, wt + (size_t)c * VF, sizeof wv);                                   \
                    acc += xp[c] * wv;                                                             \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        acc += bv;                                                                                 \
        const int f0 = b * VF;                                                                     \
        const int n = k->nmaps - f0 < VF ? k->nmaps - f0 : VF;                                     \
        memcpy(dst + (size_t)ox * k->nmaps + f0, &acc, (size_t)n * sizeof(float));                 \
    }

/* MODE_EXPAND: a 16-lane vector holds G = 16 / vf consecutive output pixels × vf maps.
 * Every padded input row is expanded once (ring of rows) into planes whose lane l of
 * column k holds the input value that map l reads there (dense: channel e, repeated;
 * depthwise: the map's own channel), split by column phase for the stride, so each
 * (tap, plane) is one unaligned load and one multiply-add per G pixels, borders included. */
#define EXPAND_BLOCK(PX)                                                                           \
    INLINE void expand_##PX(const Conv *k, const float *const *erows, int ox, int b, float *dst,   \
                            float *tail) {                                                         \
        v16 acc[PX];                                                                               \
        v16 bv;                                                                                    \
        const int vf = k->vf, g = 16 / vf;                                                         \
        for (int l = 0; l < 16; l++) bv[l] = k->bias[(size_t)b * vf + l % vf];                     \
        for (int p = 0; p < PX; p++) acc[p] = (v16){0};                                            \
        const int kw = k->kw;                                                                      \
        const int e0 = k->depthwise ? b : 0, ne = k->depthwise ? 1 : k->nplanes;                   \
        const float *wb = k->w + (size_t)b * k->kh * kw * ne * 16;                                 \
        for (int i = 0; i < k->kh; i++) {                                                          \
            const float *er = erows[i];                                                            \
            if (!er) continue;                                                                     \
            for (int j = 0; j < kw; j++) {                                                         \
                const float *restrict src = er + k->joff[j] + (size_t)ox * vf;                     \
                const float *restrict wt = wb + (size_t)(i * kw + j) * ne * 16;                    \
                for (int e = 0; e < ne; e++) {                                                     \
                    v16 wv;                                                                        \
                    memcpy(&wv, wt + (size_t)e * 16, sizeof wv);                                   \
                    const float *restrict s = src + (size_t)(e0 + e) * k->plane;                   \
                    for (int p = 0; p < PX; p++) {                                                 \
                        v16 xv;                                                                    \
                        memcpy(&xv, s + (size_t)p * 16, sizeof xv);                                \
                        acc[p] += xv * wv;                                                         \
                    }                                                                              \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        const int f0 = b * vf;                                                                     \
        const int n = k->nmaps - f0 < vf ? k->nmaps - f0 : vf;                                     \
        const int whole = n == vf && vf == k->nmaps;                                               \
        vi16 cidx;                                                                                 \
        memcpy(&cidx, k->cidx, sizeof cidx);                                                       \
        const size_t row_end = (size_t)k->ox1 * k->nmaps;                                           \
        for (int p = 0; p < PX; p++) {                                                             \
            const int px0 = ox + p * g;                                                            \
            acc[p] += bv;                                                                          \
            if (whole && px0 + g <= k->ox1) {                                                       \
                memcpy(dst + (size_t)px0 * vf, &acc[p], sizeof(v16));                              \
                continue;                                                                          \
            }                                                                                      \
            if (k->nb == 1) { /* G pixels of nmaps < vf maps: packed by one permute */             \
                if (px0 >= k->ox1) break;                                                           \
                const v16 t = __builtin_shuffle(acc[p], cidx);                                     \
                const size_t at = (size_t)px0 * k->nmaps;                                          \
                /* a whole vector where it stays inside the row: the next one overwrites the rest */ \
                if (at + 16 <= row_end) memcpy(dst + at, &t, sizeof t);                            \
                else memcpy(dst + at, &t, sizeof(float) * (row_end - at));                         \
                continue;                                                                          \
            }                                                                                      \
            memcpy(tail, &acc[p], sizeof(v16));                                                    \
            for (int t = 0; t < g && px0 + t < k->ox1; t++) {                                       \
                float *o = dst + (size_t)(px0 + t) * k->nmaps + f0;                                \
                for (int l = 0; l < n; l++) o[l] = tail[t * vf + l];                               \
            }                                                                                      \
        }                                                                                          \
    }

/* MODE_GATHER (depthwise whose expanded rows would not fit the cache): lane l of block b is
 * map b*16 + l, its input gathered from its channel, one pixel at a time. */
INLINE void gather_px(const Conv *k, const float *const *rows, int ox, int b, float *dst) {
    v16 acc = {0}, bv;
    memcpy(&bv, k->bias + (size_t)b * 16, sizeof bv);
    const float *wb = k->w + (size_t)b * k->kh * k->kw * 16;
    int chan[16];
    for (int l = 0; l < 16; l++) {
        int m = b * 16 + l;
        chan[l] = m < k->nmaps ? m / k->mult : 0;
    }
    for (int i = 0; i < k->kh; i++) {
        const float *r = rows[i];
        if (!r) continue;
        for (int j = 0; j < k->kw; j++) {
            const int col = k->colmap[ox * k->sw + j * k->dw];
            if (col < 0) continue;
            const float *px = r + (size_t)col * k->C;
            v16 xv, wv;
            for (int l = 0; l < 16; l++) xv[l] = px[chan[l]];
            memcpy(&wv, wb + (size_t)(i * k->kw + j) * 16, sizeof wv);
            acc += xv * wv;
        }
    }
    acc += bv;
    const int f0 = b * 16;
    const int n = k->nmaps - f0 < 16 ? k->nmaps - f0 : 16;
    memcpy(dst + (size_t)ox * k->nmaps + f0, &acc, (size_t)n * sizeof(float));
}


/* MODE_PLANAR (dense layers of at most 8 maps): the expanded rows hold one plane per channel
 * and column phase, one value per column (vf = 1), and a vector holds VL consecutive output
 * pixels of one map. Each input vector loaded (one per tap and channel) is multiplied by NF
 * broadcast weights, one per map, into NF x PX accumulators: no lane is wasted on maps the
 * layer does not have, and a load serves NF multiply-adds. The sums run in the order (tap row,
 * tap column, channel), then the bias, as MODE_EXPAND and MODE_BROADCAST add them. The maps of
 * a pixel are interleaved (NHWC) on the way out: by shuffles for 16 lanes, else through a
 * small buffer. Weights are (kh, kw, C, NF) scalars. */

/* 16 pixels x NF maps from NF vectors (map f's 16 pixels) to NF vectors of pixel-major
 * values. Returns 0 (and stores nothing) where there is no shuffle sequence for NF. */
INLINE int planar_store_16(const v16 *a, int nf, float *o) {
    if (nf == 1) {
        memcpy(o, &a[0], sizeof(v16));
        return 1;
    }
    const vi16 lo = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23};
    const vi16 hi = {8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
    if (nf == 2) {
        const v16 t0 = __builtin_shuffle(a[0], a[1], lo), t1 = __builtin_shuffle(a[0], a[1], hi);
        memcpy(o, &t0, sizeof t0);
        memcpy(o + 16, &t1, sizeof t1);
        return 1;
    }
    if (nf == 4 || nf == 8) {
        /* pairs of maps interleaved, then pairs of pairs: pixel-major groups of 4 maps */
        const vi16 q0 = {0, 1, 16, 17, 2, 3, 18, 19, 4, 5, 20, 21, 6, 7, 22, 23};
        const vi16 q1 = {8, 9, 24, 25, 10, 11, 26, 27, 12, 13, 28, 29, 14, 15, 30, 31};
        v16 g[2][4]; /* g[h][k]: pixels 4k..4k+3, maps 4h..4h+3 */
        for (int h = 0; h < nf / 4; h++) {
            const v16 *b = a + 4 * h;
            const v16 s01l = __builtin_shuffle(b[0], b[1], lo), s01h = __builtin_shuffle(b[0], b[1], hi);
            const v16 s23l = __builtin_shuffle(b[2], b[3], lo), s23h = __builtin_shuffle(b[2], b[3], hi);
            g[h][0] = __builtin_shuffle(s01l, s23l, q0);
            g[h][1] = __builtin_shuffle(s01l, s23l, q1);
            g[h][2] = __builtin_shuffle(s01h, s23h, q0);
            g[h][3] = __builtin_shuffle(s01h, s23h, q1);
        }
        if (nf == 4) {
            for (int t = 0; t < 4; t++) memcpy(o + 16 * t, &g[0][t], sizeof(v16));
            return 1;
        }
        const vi16 e0 = {0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23};
        const vi16 e1 = {8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31};
        for (int t = 0; t < 4; t++) {
            const v16 u0 = __builtin_shuffle(g[0][t], g[1][t], e0), u1 = __builtin_shuffle(g[0][t], g[1][t], e1);
            memcpy(o + 32 * t, &u0, sizeof u0);
            memcpy(o + 32 * t + 16, &u1, sizeof u1);
        }
        return 1;
    }
    return 0;
}
INLINE int planar_store_8(const v8 *a, int nf, float *o) {
    if (nf == 1) {
        memcpy(o, &a[0], sizeof(v8));
        return 1;
    }
    return 0;
}
INLINE int planar_store_4(const v4 *a, int nf, float *o) {
    if (nf == 1) {
        memcpy(o, &a[0], sizeof(v4));
        return 1;
    }
    return 0;
}

/* Whether every lane is 0 (the lanes spilled once, ORed as 64-bit words). */
INLINE int vec_all_zero_16(vi16 v) { uint64_t w[8]; memcpy(w, &v, sizeof w); return !((w[0] | w[1] | w[2] | w[3]) | (w[4] | w[5] | w[6] | w[7])); }
INLINE int vec_all_zero_8(vi8 v) { uint64_t w[4]; memcpy(w, &v, sizeof w); return !(w[0] | w[1] | w[2] | w[3]); }
INLINE int vec_all_zero_4(vi4 v) { uint64_t w[2]; memcpy(w, &v, sizeof w); return !(w[0] | w[1]); }

/* A float lane's bits u (signed 32-bit integer lanes) under ReLU (d > 0 ? d : 0): kept when
 * the sign bit is clear and the value is not NaN, else +0; and bit 8 set when the value is
 * Inf or NaN (exponent all ones: exponent + 1 carries into bit 8). Integer lane arithmetic:
 * vector compares would be split into scalars by GCC's generic vectors. */
#define RELU_BITS(u) ((u) & ~((u) >> 31) & ((((u) & 0x7fffffff) - 0x7f800001) >> 31))
#define NONFINITE_BIT(u) ((((u) >> 23) & 0xff) + 1)

/* Whether the planar kernel applies the activation itself (in registers, before the store,
 * with the scalar pass's exact expressions) and checks the finished values for Inf/NaN. */
#define PLANAR_FUSES(act) ((act) == ACT_NONE || (act) == ACT_RELU || (act) == ACT_ABS)

#define PLANAR_BLOCK(VT, VIT, VL, NF, PX, TAG)                                                     \
    /* Returns whether a stored value is Inf or NaN (when the activation is fused). */           \
    INLINE int planar_##VL##_##NF##_##TAG(const Conv *k, const float *const *erows, int ox,       \
                                         float *dst) {                                             \
        VT acc[NF * PX];                                                                           \
        for (int q = 0; q < NF * PX; q++) acc[q] = (VT){0};                                        \
        const int kw = k->kw, C = k->C;                                                            \
        const size_t plane = k->plane;                                                             \
        for (int i = 0; i < k->kh; i++) {                                                          \
            const float *er = erows[i];                                                            \
            if (!er) continue;                                                                     \
            for (int j = 0; j < kw; j++) {                                                         \
                const float *restrict src = er + k->joff[j] + ox;                                  \
                const float *restrict wt = k->w + (size_t)(i * kw + j) * C * NF;                   \
                for (int c = 0; c < C; c++) {                                                      \
                    const float *restrict s = src + (size_t)c * plane;                             \
                    VT xv[PX];                                                                     \
                    for (int p = 0; p < PX; p++) memcpy(&xv[p], s + p * VL, sizeof(VT));           \
                    const float *restrict wc = wt + (size_t)c * NF; /* plain displacements */      \
                    for (int f = 0; f < NF; f++) {                                                 \
                        const float wf = wc[f];                                                    \
                        for (int p = 0; p < PX; p++) acc[f * PX + p] += xv[p] * wf;                \
                    }                                                                              \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        for (int f = 0; f < NF; f++) {                                                             \
            const float bf = k->bias[f];                                                           \
            for (int p = 0; p < PX; p++) acc[f * PX + p] += bf;                                    \
        }                                                                                          \
        /* The activation and the Inf/NaN test in integer lane arithmetic (RELU_BITS,          \
           NONFINITE_BIT; abs clears the sign bit). */                                         \
        const int fused = PLANAR_FUSES(k->act);                                                    \
        if (k->act == ACT_RELU || k->act == ACT_ABS) {                                             \
            for (int q = 0; q < NF * PX; q++) {                                                    \
                VIT u;                                                                             \
                memcpy(&u, &acc[q], sizeof u);                                                     \
                if (k->act == ACT_ABS) u &= 0x7fffffff;                                            \
                else u = RELU_BITS(u);                                                             \
                memcpy(&acc[q], &u, sizeof u);                                                     \
            }                                                                                      \
        }                                                                                          \
        const int n = k->ox1 - ox;                                                                 \
        float *o = dst + (size_t)ox * NF;                                                          \
        if (n >= PX * VL) {                                                                        \
            int bad = 0;                                                                           \
            if (fused) {                                                                           \
                VIT any = {0};                                                                     \
                for (int q = 0; q < NF * PX; q++) {                                                \
                    VIT u;                                                                         \
                    memcpy(&u, &acc[q], sizeof u);                                                 \
                    any |= NONFINITE_BIT(u);                                                       \
                }                                                                                  \
                bad = !vec_all_zero_##VL(any & 0x100);                                             \
            }                                                                                      \
            VT part[NF];                                                                           \
            int done = 1;                                                                          \
            for (int p = 0; p < PX && done; p++) {                                                 \
                for (int f = 0; f < NF; f++) part[f] = acc[f * PX + p];                            \
                done = planar_store_##VL(part, NF, o + (size_t)p * VL * NF);                       \
            }                                                                                      \
            if (done) return bad != 0;                                                             \
        }                                                                                          \
        float tmp[NF][PX * VL] __attribute__((aligned(64)));                                       \
        for (int f = 0; f < NF; f++)                                                               \
            for (int p = 0; p < PX; p++) memcpy(&tmp[f][p * VL], &acc[f * PX + p], sizeof(VT));    \
        const int m = n < PX * VL ? n : PX * VL;                                                   \
        uint32_t bad = 0;                                                                          \
        for (int t = 0; t < m; t++)                                                                \
            for (int f = 0; f < NF; f++) {                                                         \
                const float v = tmp[f][t];                                                         \
                uint32_t u;                                                                        \
                memcpy(&u, &v, sizeof u);                                                          \
                bad |= (u & 0x7f800000u) == 0x7f800000u;                                           \
                o[(size_t)t * NF + f] = v;                                                         \
            }                                                                                      \
        return fused && bad;                                                                       \
    }

/* One output row (columns [ox0, ox1)) of a planar layer of NF maps: blocks of PX vectors,
 * then one vector at a time (the last one may be partly stored). Returns whether a stored
 * value is Inf or NaN (fused activations). */
#define PLANAR_ROW(VT, VIT, VL, NF, PX)                                                            \
    PLANAR_BLOCK(VT, VIT, VL, NF, PX, body)                                                        \
    PLANAR_BLOCK(VT, VIT, VL, NF, 1, tail)                                                         \
    INLINE int planar_row_##VL##_##NF(const Conv *k, const float *const *erows, float *dst) {      \
        int ox = k->ox0, bad = 0;                                                                  \
        for (; ox + PX * VL <= k->ox1; ox += PX * VL) bad |= planar_##VL##_##NF##_body(k, erows, ox, dst); \
        for (; ox < k->ox1; ox += VL) bad |= planar_##VL##_##NF##_tail(k, erows, ox, dst);         \
        return bad;                                                                                \
    }

#define DENSE_BLOCKS(PX)                                                                           \
    DENSE_BLOCK(v16, 16, PX, 0)                                                                    \
    DENSE_BLOCK(v16, 16, PX, 1)                                                                    \
    DENSE_BLOCK(v16, 16, PX, 2)                                                                    \
    DENSE_BLOCK(v16, 16, PX, 3)                                                                    \
    DENSE_BLOCK(v16, 16, PX, 4)                                                                    \
    DENSE_BLOCK(v16, 16, PX, 6)                                                                    \
    DENSE_BLOCK(v16, 16, PX, 8)
DENSE_BLOCKS(8)
/* 16 pixels where a pixel steps 6 or 8 values (stride 2 on RGB: W4 50 ms on one core against
   55 ms in blocks of 8; stride 1 on RGB keeps 8, W2 176 ms against 265 ms in blocks of 16) */
DENSE_BLOCK(v16, 16, 16, 6)
DENSE_BLOCK(v16, 16, 16, 8)
DENSE_BLOCKS(6)
DENSE_BLOCKS(3)
DENSE_EDGE(v16, 16)
EXPAND_BLOCK(8)
EXPAND_BLOCK(4)
EXPAND_BLOCK(2)
/* pixel blocks per map count: NF x PX accumulators in the 32 (AVX-512) or 16 registers */
PLANAR_ROW(v16, vi16, 16, 1, 8)
PLANAR_ROW(v16, vi16, 16, 2, 6)
PLANAR_ROW(v16, vi16, 16, 3, 4)
PLANAR_ROW(v16, vi16, 16, 4, 4)
PLANAR_ROW(v16, vi16, 16, 5, 3)
PLANAR_ROW(v16, vi16, 16, 6, 3)
PLANAR_ROW(v16, vi16, 16, 7, 2)
PLANAR_ROW(v16, vi16, 16, 8, 2)

/* MODE_BROADCAST with a 2x2 pool (valid, stride 2) fused in registers: PX conv columns from
 * ox (interior, even) of both conv rows of a pooled row (input rows ra, rb), maps
 * [b*16, b*16 + 16), finished (bias, then ReLU or abs) and pooled into the PX/2 windows at
 * pooled (window ox/2 first). Each conv value is the sum dense_16_PX_PS forms, in the same
 * order, and the windows are folded in pool_tile's order, so the bits are those of the
 * unfused path; the conv rows never reach memory. Returns whether a finished conv value is
 * Inf or NaN. 2 PX accumulators: with PX = 12, 24 of AVX-512's 32 registers (W4 on one core:
 * 47 ms unfused, where the fold and the conv rows' stores and Inf/NaN scan took a quarter;
 * 38 ms with PX = 8, 36-37 ms with 12, 34-35 ms with the finish unrolled). Only the AVX-512
 * build calls it. */
#define DENSE_POOL_BLOCK(PX, PS)                                                                   \
    INLINE int dense_pool_##PX##_##PS(const Conv *k, const float *const *ra, const float *const *rb, \
                                      int ox, int b, float *pooled, int pmode) {                   \
        v16 acc[2 * PX]; /* conv row a: [0, PX), conv row b: [PX, 2 PX) */                       \
        v16 bv;                                                                                    \
        memcpy(&bv, k->bias + (size_t)b * 16, sizeof bv);                                          \
        _Pragma("GCC unroll 32") for (int p = 0; p < 2 * PX; p++) acc[p] = (v16){0};                                        \
        const int C = k->C, run = k->kw * C;                                                       \
        const size_t pstep = PS ? (size_t)PS : (size_t)k->sw * C;                                  \
        const size_t x0 = (size_t)(ox * k->sw - k->left) * C;                                      \
        const float *wb = k->w + (size_t)b * k->kh * run * 16;                                     \
        for (int i = 0; i < k->kh; i++) {                                                          \
            const float *restrict xa = ra[i] ? ra[i] + x0 : NULL;                                  \
            const float *restrict xb = rb[i] ? rb[i] + x0 : NULL;                                  \
            const float *restrict wt = wb + (size_t)i * run * 16;                                  \
            if (k->prefetch) /* the next block's values of these rows (see DENSE_BLOCK) */         \
                for (int o = 0; o < PX * (int)pstep; o += 16) {                                    \
                    if (xa) __builtin_prefetch(xa + PX * pstep + run + o, 0, 3);                   \
                    if (xb) __builtin_prefetch(xb + PX * pstep + run + o, 0, 3);                   \
                }                                                                                  \
            if (xa && xb) {                                                                        \
                for (int t = 0; t < run; t++) {                                                    \
                    v16 wv;                                                                        \
                    memcpy(&wv, wt + (size_t)t * 16, sizeof wv);                                   \
                    for (int p = 0; p < PX; p++) acc[p] += xa[p * pstep + t] * wv;                 \
                    for (int p = 0; p < PX; p++) acc[PX + p] += xb[p * pstep + t] * wv;            \
                }                                                                                  \
            } else if (xa) { /* a border row of the other (constant indices: acc stays in      \
                                registers) */                                                       \
                for (int t = 0; t < run; t++) {                                                    \
                    v16 wv;                                                                        \
                    memcpy(&wv, wt + (size_t)t * 16, sizeof wv);                                   \
                    for (int p = 0; p < PX; p++) acc[p] += xa[p * pstep + t] * wv;                 \
                }                                                                                  \
            } else if (xb) {                                                                       \
                for (int t = 0; t < run; t++) {                                                    \
                    v16 wv;                                                                        \
                    memcpy(&wv, wt + (size_t)t * 16, sizeof wv);                                   \
                    for (int p = 0; p < PX; p++) acc[PX + p] += xb[p * pstep + t] * wv;            \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        /* the bias after the sum; ReLU, abs and the Inf/NaN test as the planar kernel has     \
           them (integer lanes, activate_row's exact results) */                               \
        /* (loops unrolled, the activation's test hoisted: the accumulators stay in registers) */ \
        vi16 u[2 * PX], any = {0};                                                                 \
        _Pragma("GCC unroll 32") for (int q = 0; q < 2 * PX; q++) {                                        \
            acc[q] += bv;                                                                          \
            memcpy(&u[q], &acc[q], sizeof u[q]);                                                   \
        }                                                                                          \
        if (k->act == ACT_ABS) {                                                                   \
            _Pragma("GCC unroll 32") for (int q = 0; q < 2 * PX; q++) u[q] &= 0x7fffffff;                   \
        } else if (k->act == ACT_RELU) {                                                           \
            _Pragma("GCC unroll 32") for (int q = 0; q < 2 * PX; q++)                                       \
                u[q] = RELU_BITS(u[q]);                                                            \
        }                                                                                          \
        _Pragma("GCC unroll 32") for (int q = 0; q < 2 * PX; q++) {                                        \
            any |= NONFINITE_BIT(u[q]);                                                            \
            memcpy(&acc[q], &u[q], sizeof u[q]);                                                   \
        }                                                                                          \
        const int f0 = b * 16;                                                                     \
        const int n = k->nmaps - f0 < 16 ? k->nmaps - f0 : 16;                                     \
        _Pragma("GCC unroll 32") for (int q = 0; q < PX / 2; q++) {                                \
            /* pool_tile's order: the window's top row left to right, then its bottom row */     \
            const v16 v[4] = {acc[2 * q], acc[2 * q + 1], acc[PX + 2 * q], acc[PX + 2 * q + 1]};   \
            v16 a = v[0];                                                                          \
            _Pragma("GCC unroll 32") for (int e = 1; e < 4; e++) {                                  \
                if (pmode == POOL_MAX) { /* v > a ? v : a, lane by lane */                         \
                    const vi16 gt = v[e] > a;                                                      \
                    vi16 vu, au;                                                                   \
                    memcpy(&vu, &v[e], sizeof vu);                                                 \
                    memcpy(&au, &a, sizeof au);                                                    \
                    au = (vu & gt) | (au & ~gt);                                                   \
                    memcpy(&a, &au, sizeof a);                                                     \
                } else {                                                                           \
                    a += v[e];                                                                     \
                }                                                                                  \
            }                                                                                      \
            if (pmode == POOL_AVG) a /= 4.0f;                                                      \
            float *o = pooled + (size_t)q * k->nmaps + f0;                                         \
            if (n == 16) memcpy(o, &a, sizeof a);                                                  \
            else memcpy(o, &a, (size_t)n * sizeof(float));                                         \
        }                                                                                          \
        return !vec_all_zero_16(any & 0x100);                                                      \
    }
DENSE_POOL_BLOCK(12, 0)
DENSE_POOL_BLOCK(12, 3)
DENSE_POOL_BLOCK(12, 6)
DENSE_POOL_BLOCK(12, 8)
#define PLANAR_ROWS_16REG(VT, VIT, VL) \
    PLANAR_ROW(VT, VIT, VL, 1, 6)      \
    PLANAR_ROW(VT, VIT, VL, 2, 4)      \
    PLANAR_ROW(VT, VIT, VL, 3, 3)      \
    PLANAR_ROW(VT, VIT, VL, 4, 2)      \
    PLANAR_ROW(VT, VIT, VL, 5, 2)      \
    PLANAR_ROW(VT, VIT, VL, 6, 2)      \
    PLANAR_ROW(VT, VIT, VL, 7, 1)      \
    PLANAR_ROW(VT, VIT, VL, 8, 1)
PLANAR_ROWS_16REG(v8, vi8, 8)
PLANAR_ROWS_16REG(v4, vi4, 4)

/* Whether any of n values is Inf or NaN (all exponent bits set). */
INLINE int any_nonfinite(const float *restrict d, size_t n) {
    uint32_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, d + i, sizeof u);
        bad |= (u & 0x7f800000u) == 0x7f800000u;
    }
    return bad != 0;
}

INLINE void activate_row(const Conv *k, float *restrict d, size_t n) {
    switch (k->act) {
    case ACT_RELU:
        for (size_t i = 0; i < n; i++) d[i] = d[i] > 0.0f ? d[i] : 0.0f;
        break;
    case ACT_LEAKY: {
        const float s = k->slope;
        for (size_t i = 0; i < n; i++) d[i] = d[i] < 0.0f ? d[i] * s : d[i];
        break;
    }
    case ACT_SIGMOID:  /* as the numpy path: 0.5 * (1 + tanh(x / 2)) */
        for (size_t i = 0; i < n; i++) d[i] = (tanhf(d[i] * 0.5f) + 1.0f) * 0.5f;
        break;
    case ACT_TANH:
        for (size_t i = 0; i < n; i++) d[i] = tanhf(d[i]);
        break;
    case ACT_ABS:
        for (size_t i = 0; i < n; i++) d[i] = fabsf(d[i]);
        break;
    default:
        break;
    }
}

/* Expand one padded input row for a dense layer: plane c, lane block of column k holds
 * x[r, col, c] repeated VF times (zeros where the column map says so). */
#define BUILD_DENSE(VT, VF)                                                                        \
    for (int q = 0; q < sw; q++) {                                                                 \
        for (int col_k = k->bc0; col_k < k->bc1; col_k++) {                                        \
            const Py_ssize_t col = (Py_ssize_t)col_k * sw + q;                                     \
            const int src = col < ncolmap ? colmap[col] : -1;                                      \
            float *o = e + (size_t)q * ncol * VF + (size_t)col_k * VF;                             \
            if (src < 0) {                                                                         \
                const VT z = {0};                                                                  \
                for (int c = 0; c < C; c++) memcpy(o + (size_t)c * plane, &z, sizeof z);           \
                continue;                                                                          \
            }                                                                                      \
            const float *restrict px = xr + (size_t)src * C;                                       \
            for (int c = 0; c < C; c++) {                                                          \
                const VT t = (VT){0} + px[c];                                                      \
                memcpy(o + (size_t)c * plane, &t, sizeof t);                                       \
            }                                                                                      \
        }                                                                                          \
    }


/* One column (phase 0) of a dense expanded row, through the column map. */
INLINE void build_column(const Conv *k, float *e, const float *xr, int col_k) {
    const int src = col_k < k->ncolmap ? k->colmap[col_k] : -1;
    float *o = e + (size_t)col_k * k->vf;
    for (int c = 0; c < k->C; c++) {
        const float v = src < 0 ? 0.0f : xr[(size_t)src * k->C + c];
        for (int l = 0; l < k->vf; l++) o[(size_t)c * k->plane + l] = v;
    }
}

/* Column col_k of every stride phase q (padded column col_k * sw + q) of a dense layer's
 * planes of one value per column. */
INLINE void build_column_phased(const Conv *k, float *e, const float *xr, int col_k) {
    for (int q = 0; q < k->sw; q++) {
        const Py_ssize_t col = (Py_ssize_t)col_k * k->sw + q;
        const int src = col < k->ncolmap ? k->colmap[col] : -1;
        float *o = e + (size_t)q * k->ncol + (size_t)col_k;
        for (int c = 0; c < k->C; c++) o[(size_t)c * k->plane] = src < 0 ? 0.0f : xr[(size_t)src * k->C + c];
    }
}

/* The expanded padded row pr (its input row r >= 0), from the ring or built now. */
INLINE const float *expanded_row(Conv *k, int pr, int r) {
    const int slot = pr % k->nslots;
    float *e = k->ring + (size_t)slot * k->rowsize;
    if (k->tags[slot] == pr) return e;
    k->tags[slot] = pr;
    const float *xr = k->x + (size_t)r * k->W * k->C;
    if (r + 1 < k->H && k->mode == MODE_EXPAND) {
        /* The next input row's part under this tile: a tile's rows are short runs that the
           hardware prefetchers do not follow across rows. */
        int c0 = k->bc0 * k->sw - k->left, c1 = k->bc1 * k->sw - k->left;
        c0 = c0 < 0 ? 0 : c0 > k->W ? k->W : c0;
        c1 = c1 < 0 ? 0 : c1 > k->W ? k->W : c1;
        const char *a = (const char *)(xr + (size_t)k->W * k->C + (size_t)c0 * k->C);
        const char *b = (const char *)(xr + (size_t)k->W * k->C + (size_t)c1 * k->C);
        for (; a < b; a += 64) __builtin_prefetch(a, 0, 3);
    }
    const int vf = k->vf, sw = k->sw, C = k->C, ncol = k->ncol;
    (void)ncol;
    const size_t plane = k->plane;
    const Py_ssize_t ncolmap = k->ncolmap;
    const int32_t *colmap = k->colmap;
    if (!k->depthwise) {
        const int g = 16 / vf;
        if (sw == 1 && g * C <= 16 && k->W >= g) {
            /* The inside of the row, G columns at a time: one load of G pixels (G*C values) and
               one permute per channel give the G x vf lanes of that channel's plane. */
            const float *end = k->x + (size_t)k->H * k->W * C;
            vi16 idx[16];
            for (int c = 0; c < C; c++)
                for (int l = 0; l < 16; l++) idx[c][l] = (l / vf) * C + c;
            const int lo = k->left, hi = k->left + k->W < k->bc1 ? k->left + k->W : k->bc1;
            int col_k = k->bc0;
            for (; col_k < k->bc1; col_k++) {  /* up to the inside: through the column map */
                if (col_k >= lo && col_k < hi) break;
                build_column(k, e, xr, col_k);
            }
            for (; col_k + g <= hi; col_k += g) {
                const float *px = xr + (size_t)(col_k - lo) * C;
                if (px + 16 > end) break;
                v16 v;
                memcpy(&v, px, sizeof v);
                float *o = e + (size_t)col_k * vf;
                for (int c = 0; c < C; c++) {
                    const v16 t = __builtin_shuffle(v, idx[c]);
                    memcpy(o + (size_t)c * plane, &t, sizeof t);
                }
            }
            for (; col_k < k->bc1; col_k++) build_column(k, e, xr, col_k);
            return e;
        }
        if (vf == 1 && sw == 1 && C >= 2 && C <= 4 && k->W >= 16) {
            /* Planes of one value per column (MODE_PLANAR, or MODE_EXPAND of one map) from
               2-4 interleaved channels: 16 pixels are C loads, and each channel's 16 values
               are one to three two-vector permutes of them. */
            vi16 i1[4], i2[4], i3;
            for (int c = 0; c < C; c++)
                for (int l = 0; l < 16; l++) {
                    const int at = l * C + c;
                    if (C == 4) {
                        i1[c][l] = l < 8 ? at : 0;
                        i2[c][l] = l >= 8 ? at - 32 : 0;
                    } else {
                        i1[c][l] = at < 32 ? at : 0;
                        i2[c][l] = at < 32 ? l : 16 + at - 32;
                    }
                }
            for (int l = 0; l < 16; l++) i3[l] = l < 8 ? l : 16 + l;
            const int lo = k->left, hi = k->left + k->W < k->bc1 ? k->left + k->W : k->bc1;
            int col_k = k->bc0;
            for (; col_k < k->bc1; col_k++) {  /* up to the inside: through the column map */
                if (col_k >= lo && col_k < hi) break;
                build_column(k, e, xr, col_k);
            }
            for (; col_k + 16 <= hi; col_k += 16) {
                const float *px = xr + (size_t)(col_k - lo) * C;
                /* separate loads (one memcpy of C vectors becomes a slow `rep movs`) */
                v16 v0, v1, v2 = {0}, v3 = {0};
                memcpy(&v0, px, sizeof v0);
                memcpy(&v1, px + 16, sizeof v1);
                if (C >= 3) memcpy(&v2, px + 32, sizeof v2);
                if (C == 4) memcpy(&v3, px + 48, sizeof v3);
                float *o = e + col_k;
                for (int c = 0; c < C; c++) {
                    v16 t;
                    if (C == 2) t = __builtin_shuffle(v0, v1, i1[c]);
                    else if (C == 3) t = __builtin_shuffle(__builtin_shuffle(v0, v1, i1[c]), v2, i2[c]);
                    else t = __builtin_shuffle(__builtin_shuffle(v0, v1, i1[c]),
                                               __builtin_shuffle(v2, v3, i2[c]), i3);
                    memcpy(o + (size_t)c * plane, &t, sizeof t);
                }
            }
            for (; col_k < k->bc1; col_k++) build_column(k, e, xr, col_k);
            return e;
        }
        if (vf == 1 && sw >= 2 && sw * C <= 8 && k->W >= 16 * sw) {
            /* Stride phases of one value per column (MODE_PLANAR with a column stride): 16
               columns of every phase are 16 * sw pixels, n = sw * C loads; each (phase,
               channel) plane's 16 values come from the loads two at a time by two-vector
               permutes, merged by permutes: 5 per plane vector for RGB at stride 2, where
               the column map's scalar loop was a third of the kernel's time (W1's layer at
               stride 2 on one core: 12.5 ms before, 8.8 ms after). */
            const int n = sw * C, pairs = (n + 1) / 2;
            const vi16(*pick)[4] = k->pick, (*merge)[4] = k->merge;
            const int lo = (k->left + sw - 1) / sw;  /* the first column whose pixels are all inside */
            int col_k = k->bc0;
            for (; col_k < k->bc1 && col_k < lo; col_k++) build_column_phased(k, e, xr, col_k);
            for (; col_k + 16 <= k->bc1 && (col_k + 16) * sw - k->left <= k->W; col_k += 16) {
                const float *px = xr + (size_t)(col_k * sw - k->left) * C;
                /* separate fixed-size loads: a loop of them becomes one memcpy call of n
                   vectors through the stack */
                v16 v[8] = {{0}};
                memcpy(&v[0], px, sizeof(v16));
                memcpy(&v[1], px + 16, sizeof(v16));
                if (n > 2) memcpy(&v[2], px + 32, sizeof(v16));
                if (n > 3) memcpy(&v[3], px + 48, sizeof(v16));
                if (n > 4) memcpy(&v[4], px + 64, sizeof(v16));
                if (n > 5) memcpy(&v[5], px + 80, sizeof(v16));
                if (n > 6) memcpy(&v[6], px + 96, sizeof(v16));
                if (n > 7) memcpy(&v[7], px + 112, sizeof(v16));
                for (int o = 0; o < n; o++) {
                    v16 r = __builtin_shuffle(v[0], v[1], pick[o][0]);
                    for (int m = 1; m < pairs; m++)
                        r = __builtin_shuffle(r, __builtin_shuffle(v[2 * m], v[2 * m + 1], pick[o][m]), merge[o][m]);
                    memcpy(e + (size_t)(o / C) * ncol + (size_t)col_k + (size_t)(o % C) * plane, &r, sizeof r);
                }
            }
            for (; col_k < k->bc1; col_k++) build_column_phased(k, e, xr, col_k);
            return e;
        }
        switch (vf) {
        case 1: BUILD_DENSE(v1, 1) break;
        case 2: BUILD_DENSE(v2, 2) break;
        case 4: BUILD_DENSE(v4, 4) break;
        default: BUILD_DENSE(v8, 8) break;
        }
        return e;
    }
    int fast_from = k->bc1, fast_to = k->bc1;  /* columns [from, to) built by the fast loop */
    if (sw == 1 && k->mult == 1 && k->nplanes == 1 && (16 / vf) * C <= 16 && k->W >= 16 / vf) {
        /* Lanes are the pixel's channels (lanes past C read the next pixel: their weights are
           zero and they are never stored): G pixels are one load and one permute. */
        const int g = 16 / vf;
        const float *end = k->x + (size_t)k->H * k->W * C;
        vi16 idx;
        for (int l = 0; l < 16; l++) idx[l] = (l / vf) * C + (l % vf < C ? l % vf : C - 1);
        const int lo = k->left, hi = k->left + k->W < k->bc1 ? k->left + k->W : k->bc1;
        fast_from = lo > k->bc0 ? lo : k->bc0;
        if (fast_from > k->bc1) fast_from = k->bc1;
        int col_k = fast_from;
        for (; col_k + g <= hi; col_k += g) {
            const float *px = xr + (size_t)(col_k - lo) * C;
            if (px + 16 > end) break;
            v16 v;
            memcpy(&v, px, sizeof v);
            const v16 t = __builtin_shuffle(v, idx);
            memcpy(e + (size_t)col_k * vf, &t, sizeof t);
        }
        fast_to = col_k;
    }
    for (int q = 0; q < sw; q++) {
        for (int col_k = k->bc0; col_k < k->bc1; col_k++) {
            if (q == 0 && col_k == fast_from) col_k = fast_to;
            if (col_k >= k->bc1) break;
            const Py_ssize_t col = (Py_ssize_t)col_k * sw + q;
            const int src = col < k->ncolmap ? k->colmap[col] : -1;
            const float *px = src < 0 ? NULL : xr + (size_t)src * C;
            float *o = e + (size_t)q * k->ncol * vf + (size_t)col_k * vf;
            if (!px) {
                for (int b = 0; b < k->nplanes; b++) memset(o + (size_t)b * k->plane, 0, sizeof(float) * (size_t)vf);
            } else if (k->mult == 1 && k->nplanes == 1) {  /* lanes are the pixel's channels */
                for (int l = 0; l < vf; l++) o[l] = l < C ? px[l] : 0.0f;
            } else {
                for (int b = 0; b < k->nplanes; b++) {
                    float *ob = o + (size_t)b * k->plane;
                    for (int l = 0; l < vf; l++) {
                        const int m = b * vf + l;
                        ob[l] = m < k->nmaps ? px[m / k->mult] : 0.0f;
                    }
                }
            }
        }
    }
    return e;
}

/* The interior pixels [ox, hi) of map block b in blocks of PX (pixel step PS); a last partial
 * block runs as a whole block ending at hi when one fits after lo. */
#define DENSE_RUN(PX, PS)                                                                          \
    do {                                                                                           \
        for (; ox + PX <= hi; ox += PX) dense_16_##PX##_##PS(k, rr, ox, b, dst);                   \
        if (ox < hi && hi - PX >= lo) {                                                            \
            dense_16_##PX##_##PS(k, rr, hi - PX, b, dst);                                          \
            ox = hi;                                                                               \
        }                                                                                          \
    } while (0)

/* Output row oy (all columns, all maps) into dst (ow x nmaps), finished with the activation.
 * PXB, PXE: pixel blocks of the broadcast and expand kernels for this instruction set. */
#define CONV_ROW(SUFFIX, ATTR, PXB, PXE, VL, PXW)                                                         \
    ATTR static void conv_row_##SUFFIX(Conv *k, int oy, float *dst) {                              \
        const float *rows[64];                                                                     \
        const float **rp = rows;                                                                   \
        const float **heap = NULL;                                                                 \
        if (k->kh > 64) {                                                                          \
            heap = (const float **)malloc(sizeof(float *) * (size_t)k->kh);                        \
            if (!heap) return;                                                                     \
            rp = heap;                                                                             \
        }                                                                                          \
        for (int i = 0; i < k->kh; i++) {                                                          \
            const int pr = oy * k->sh + i * k->dh;                                                 \
            const int r = k->rowmap[pr];                                                           \
            if (r < 0) rp[i] = NULL;                                                               \
            else if (k->mode == MODE_EXPAND || k->mode == MODE_PLANAR) rp[i] = expanded_row(k, pr, r);                       \
            else rp[i] = k->x + (size_t)r * k->W * k->C;                                           \
        }                                                                                          \
        const float *const *rr = (const float *const *)rp;                                         \
        if (k->mode == MODE_EXPAND) {                                                              \
            float tail[16];                                                                        \
            const int step = PXE * (16 / k->vf);                                                   \
            for (int b = 0; b < k->nb; b++)                                                        \
                for (int ox = k->ox0; ox < k->ox1; ox += step) expand_##PXE(k, rr, ox, b, dst, tail); \
        } else if (k->mode == MODE_PLANAR) {                                                       \
            int bad;                                                                               \
            switch (k->nmaps) {                                                                    \
            case 1: bad = planar_row_##VL##_1(k, rr, dst); break;                                  \
            case 2: bad = planar_row_##VL##_2(k, rr, dst); break;                                  \
            case 3: bad = planar_row_##VL##_3(k, rr, dst); break;                                  \
            case 4: bad = planar_row_##VL##_4(k, rr, dst); break;                                  \
            case 5: bad = planar_row_##VL##_5(k, rr, dst); break;                                  \
            case 6: bad = planar_row_##VL##_6(k, rr, dst); break;                                  \
            case 7: bad = planar_row_##VL##_7(k, rr, dst); break;                                  \
            default: bad = planar_row_##VL##_8(k, rr, dst); break;                                 \
            }                                                                                      \
            if (bad) k->nonfinite = 1;                                                             \
        } else if (k->mode == MODE_BROADCAST) {                                                    \
            /* columns [ox0, ox1): border pixels by the edge function; the interior in blocks,   \
               the last of them moved back to end at the interior's end (it recomputes a few     \
               pixels of the block before, to the same bits: the edge function adds the same     \
               products in the same order, at a fraction of the blocks' speed) */               \
            const int hi = k->ix1 < k->ox1 ? k->ix1 : k->ox1;                                      \
            const int lo = k->ix0 > k->ox0 ? k->ix0 : k->ox0;                                      \
            for (int b = 0; b < k->nb; b++) {                                                      \
                int ox = k->ox0;                                                                   \
                for (; ox < k->ix0 && ox < k->ox1; ox++) dense_edge_16(k, rr, ox, b, dst);         \
                switch (k->sw * k->C) {                                                            \
                case 1: DENSE_RUN(PXB, 1); break;                                                  \
                case 2: DENSE_RUN(PXB, 2); break;                                                  \
                case 3: DENSE_RUN(PXB, 3); break;                                                  \
                case 4: DENSE_RUN(PXB, 4); break;                                                  \
                case 6: DENSE_RUN(PXW, 6); break;                                                  \
                case 8: DENSE_RUN(PXW, 8); break;                                                  \
                default: DENSE_RUN(PXB, 0);                                                        \
                }                                                                                  \
                for (; ox < k->ox1; ox++) dense_edge_16(k, rr, ox, b, dst);                        \
            }                                                                                      \
        } else {                                                                                   \
            for (int b = 0; b < k->nb; b++)                                                        \
                for (int ox = k->ox0; ox < k->ox1; ox++) gather_px(k, rr, ox, b, dst);             \
        }                                                                                          \
        if (!(k->mode == MODE_PLANAR && PLANAR_FUSES(k->act))) {                                   \
            float *d0 = dst + (size_t)k->ox0 * k->nmaps;                                           \
            const size_t n = (size_t)(k->ox1 - k->ox0) * k->nmaps;                                 \
            activate_row(k, d0, n);                                                                \
            if (!k->nonfinite) k->nonfinite = any_nonfinite(d0, n);                                \
        }                                                                                          \
        free(heap);                                                                                \
    }

/* dst[0, n) = src[0, n), the 64-byte lines inside with non-temporal stores (no read of the
 * destination's lines, no eviction of the cache's working set); an sfence must follow. */
INLINE void stream_copy(float *restrict dst, const float *restrict src, size_t n) {
#if defined(__x86_64__) || defined(__i386__)
    size_t i = 0;
    for (; i < n && ((uintptr_t)(dst + i) & 63); i++) dst[i] = src[i];
    for (; i + 16 <= n; i += 16) /* SSE stores: in every build; 4 fill a line's write buffer */
        for (int j = 0; j < 16; j += 4) _mm_stream_ps(dst + i + j, _mm_loadu_ps(src + i + j));
    for (; i < n; i++) dst[i] = src[i];
#else
    memcpy(dst, src, sizeof(float) * n);
#endif
}

/* Pooled values q0 .. q0 + nq - 1 of one pooled row into acc (nq x nmaps), from the ph conv
 * rows at rows + t * rowlen (valid pooling, stride = size): each window's values taken row by
 * row, left to right (the order the sums were always formed in). */
#define POOL_TILE(SUFFIX, ATTR)                                                                    \
    ATTR __attribute__((optimize("no-tree-loop-distribute-patterns")))                             \
    static void pool_tile_##SUFFIX(const float *restrict rows, size_t rowlen, int ph, int pw, \
                                        int nmaps, int q0, int nq, float *restrict acc,            \
                                        int is_max) {                                              \
        for (int q = 0; q < nq; q++) {                                                             \
            float *a = acc + (size_t)q * nmaps;                                                    \
            for (int t = 0; t < ph; t++) {                                                         \
                const float *s = rows + (size_t)t * rowlen + (size_t)(q0 + q) * pw * nmaps;        \
                for (int u = 0; u < pw; u++) {                                                     \
                    const float *v = s + (size_t)u * nmaps;                                        \
                    if (t == 0 && u == 0) /* a loop: a memcpy call per window cost 10 % of W4 */  \
                        for (int m = 0; m < nmaps; m++) a[m] = v[m];                               \
                    else if (is_max)                                                               \
                        for (int m = 0; m < nmaps; m++) a[m] = v[m] > a[m] ? v[m] : a[m];          \
                    else                                                                           \
                        for (int m = 0; m < nmaps; m++) a[m] += v[m];                              \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
    }

/* Pooled values q0 .. q0 + nq - 1 of pooled row dst: folded from the conv rows into acc
 * (averaged), then written out once, past the cache when stream is set. */
#define POOL_OUT(SUFFIX, ATTR)                                                                     \
    ATTR static void pool_out_##SUFFIX(const float *restrict rows, size_t rowlen, int ph, int pw,  \
                                       int nmaps, int q0, int nq, float *restrict acc, int pmode,  \
                                       int stream, float *dst) {                                   \
        pool_tile_##SUFFIX(rows, rowlen, ph, pw, nmaps, q0, nq, acc, pmode == POOL_MAX);           \
        const size_t n = (size_t)nq * nmaps;                                                       \
        if (pmode == POOL_AVG) {                                                                   \
            const float count = (float)(ph * pw);                                                  \
            for (size_t i = 0; i < n; i++) acc[i] /= count;                                        \
        }                                                                                          \
        if (stream) stream_copy(dst + (size_t)q0 * nmaps, acc, n);                                 \
        else memcpy(dst + (size_t)q0 * nmaps, acc, sizeof(float) * n);                            \
    }

/* Conv columns per tile of a pooled layer (broadcast and gather kernels), a multiple of every
 * build's pixel blocks (16, 8, 6, 3): 16 maps x 2 rows of 144 columns are 18 KB. */
#define POOL_TILE_COLUMNS 144


/* Pooled row py of a 2x2-pooled broadcast layer with the pool fused in registers: windows
 * [qa, qb) (their conv columns interior) in blocks of POOL_FUSED_PX conv columns, written into
 * pacc (at their window, nmaps floats each) and copied out to dst tile by tile, past the cache
 * with stream. The last block of a map block is moved back to end at qb (it recomputes a few
 * windows to the same bits). qb - qa >= POOL_FUSED_PX / 2. Returns whether a value was Inf
 * or NaN. */
#define POOL_FUSED_PX 12
#define POOL_FUSED(SUFFIX, ATTR)                                                                   \
    ATTR static int pool_fused_##SUFFIX(Conv *k, int py, int qa, int qb, float *pacc, int pmode,   \
                                        int stream, float *dst) {                                  \
        const float *ra[64], *rb[64];                                                              \
        for (int i = 0; i < k->kh; i++) {                                                          \
            const int r0 = k->rowmap[(2 * py) * k->sh + i * k->dh];                                \
            const int r1 = k->rowmap[(2 * py + 1) * k->sh + i * k->dh];                            \
            ra[i] = r0 < 0 ? NULL : k->x + (size_t)r0 * k->W * k->C;                               \
            rb[i] = r1 < 0 ? NULL : k->x + (size_t)r1 * k->W * k->C;                               \
        }                                                                                          \
        const int half = POOL_FUSED_PX / 2, tile = POOL_TILE_COLUMNS / 2;                          \
        int bad = 0;                                                                               \
        for (int t0 = qa; t0 < qb; t0 += tile) {                                                   \
            const int t1 = t0 + tile < qb ? t0 + tile : qb;                                        \
            for (int b = 0; b < k->nb; b++) {                                                      \
                int q = t0;                                                                        \
                switch (k->sw * k->C) {                                                            \
                case 3: POOL_FUSED_RUN(3); break;                                                  \
                case 6: POOL_FUSED_RUN(6); break;                                                  \
                case 8: POOL_FUSED_RUN(8); break;                                                  \
                default: POOL_FUSED_RUN(0);                                                        \
                }                                                                                  \
            }                                                                                      \
            const size_t n = (size_t)(t1 - t0) * k->nmaps;                                         \
            if (stream) stream_copy(dst + (size_t)t0 * k->nmaps, pacc + (size_t)t0 * k->nmaps, n); \
            else memcpy(dst + (size_t)t0 * k->nmaps, pacc + (size_t)t0 * k->nmaps, sizeof(float) * n); \
        }                                                                                          \
        return bad;                                                                                \
    }
#define POOL_FUSED_RUN(PS)                                                                         \
    do {                                                                                           \
        for (; q + half <= t1; q += half)                                                          \
            bad |= dense_pool_12_##PS(k, ra, rb, 2 * q, b, pacc + (size_t)q * k->nmaps, pmode);     \
        if (q < t1)                                                                                \
            bad |= dense_pool_12_##PS(k, ra, rb, 2 * (t1 - half), b,                                \
                                     pacc + (size_t)(t1 - half) * k->nmaps, pmode);                \
    } while (0)

/* BANDS(..., FUSE): the builds that fold 2x2 pools in registers (FUSE 1) call their
 * pool_fused; the others never reach the call (fuse is 0) and name a stub. */
static int pool_fused_none(Conv *k, int py, int qa, int qb, float *pacc, int pmode, int stream, float *dst) {
    (void)k, (void)py, (void)qa, (void)qb, (void)pacc, (void)pmode, (void)stream, (void)dst;
    return 0;
}
#define POOL_FUSED_FN_0(SUFFIX) pool_fused_none
#define POOL_FUSED_FN_1(SUFFIX) pool_fused_##SUFFIX

#define BANDS(SUFFIX, ATTR, FUSE)                                                                        \
    ATTR static int bands_##SUFFIX(Conv *k, float *out, int r0, int r1, int pmode, int ph, int pw,  \
                                   int stream) {                                                   \
        if (!pmode && (k->mode == MODE_EXPAND || k->mode == MODE_PLANAR)) {                                                    \
            /* Column tiles whose expanded rows stay in L1 while the band's rows pass over them. */ \
            for (int t0 = 0; t0 < k->ow; t0 += k->tile) {                                          \
                k->ox0 = t0;                                                                       \
                k->ox1 = t0 + k->tile < k->ow ? t0 + k->tile : k->ow;                              \
                k->bc0 = t0;                                                                       \
                /* planar: the last vector of a tile may reach 15 columns past it */               \
                k->bc1 = k->ox1 + (k->mode == MODE_PLANAR ? 16 : MAX_EXPAND_VECTORS * 16 / k->vf) +  \
                         (k->kw - 1) * k->dw / k->sw + 1;                                          \
                if (k->bc1 > k->ncol) k->bc1 = k->ncol;                                            \
                for (int i = 0; i < k->nslots; i++) k->tags[i] = -1;                               \
                for (int oy = r0; oy < r1; oy++)                                                   \
                    conv_row_##SUFFIX(k, oy, out + (size_t)(oy - r0) * k->ow * k->nmaps);          \
            }                                                                                      \
            return 0;                                                                              \
        }                                                                                          \
        k->ox0 = 0;                                                                                \
        k->ox1 = k->ow;                                                                            \
        k->bc0 = 0;                                                                                \
        k->bc1 = k->ncol;                                                                          \
        if (!pmode) {                                                                              \
            for (int oy = r0; oy < r1; oy++)                                                       \
                conv_row_##SUFFIX(k, oy, out + (size_t)(oy - r0) * k->ow * k->nmaps);              \
            return 0;                                                                              \
        }                                                                                          \
        const int opw = k->ow / pw;                                                                \
        const int used = opw * pw; /* the conv columns the pooling reads */                        \
        const size_t prow = (size_t)opw * k->nmaps;                                                \
        /* Column tiles: a tile's ph conv rows and its pooled values stay in L1 and each pooled \
           value is written out once, with non-temporal stores when the output is large (the   \
           output's lines are not read). The expand and planar kernels take the band's rows    \
           tile by tile, as without pooling (each expanded input row built once per tile, in   \
           L1); the broadcast and gather kernels take each pooled row's tiles in turn. A        \
           pixel's bits do not depend on the tiles. */                                          \
        const int whole = k->mode == MODE_EXPAND || k->mode == MODE_PLANAR;                        \
        const size_t rowlen = (size_t)k->ow * k->nmaps;                                            \
        /* a tile may pool up to the whole row (the first tile runs to the first interior      \
           column, the last one to the end) */                                                  \
        float *rows = scratch_get(SCRATCH_POOL, sizeof(float) * (rowlen * (size_t)ph + prow));    \
        if (!rows) return -1;                                                                      \
        float *pacc = rows + rowlen * (size_t)ph;                                                  \
        if (whole) {                                                                               \
            const int tile = k->tile >= pw ? k->tile / pw * pw : pw;                               \
            for (int t0 = 0; t0 < used; t0 += tile) {                                              \
                k->ox0 = t0;                                                                       \
                k->ox1 = t0 + tile < used ? t0 + tile : used;                                      \
                k->bc0 = t0;                                                                       \
                k->bc1 = k->ox1 + (k->mode == MODE_PLANAR ? 16 : MAX_EXPAND_VECTORS * 16 / k->vf) +  \
                         (k->kw - 1) * k->dw / k->sw + 1;                                          \
                if (k->bc1 > k->ncol) k->bc1 = k->ncol;                                            \
                for (int i = 0; i < k->nslots; i++) k->tags[i] = -1;                               \
                const int q0 = t0 / pw, nq = k->ox1 / pw - q0;                                     \
                for (int py = r0; py < r1; py++) {                                                 \
                    for (int t = 0; t < ph; t++) conv_row_##SUFFIX(k, py * ph + t, rows + (size_t)t * rowlen); \
                    pool_out_##SUFFIX(rows, rowlen, ph, pw, k->nmaps, q0, nq, pacc, pmode, stream, \
                                      out + (size_t)(py - r0) * prow);                             \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        /* interior columns: a tile's blocks start at the first of them or at the tile's start  \
           and the tile spans whole blocks of every build (POOL_TILE_COLUMNS is a multiple of   \
           16, 8, 6 and 3), so no interior pixel falls to the per-pixel edge function */        \
        const int inner_end = k->ix1 < used ? k->ix1 : used;                                       \
        k->prefetch = !whole;                                                                      \
        /* 2x2 windows over interior columns: pooled in registers (pool_fused), the border      \
           windows as below */                                                                  \
        const int qa = (k->ix0 + 1) / 2, qb = inner_end / 2;                                       \
        const int fuse = FUSE && !whole && k->mode == MODE_BROADCAST && ph == 2 && pw == 2 &&       \
                         k->dw == 1 && k->kh <= 64 && PLANAR_FUSES(k->act) && qb - qa >= POOL_FUSED_PX / 2; \
        for (int py = r0; py < r1 && fuse; py++) {                                                 \
            float *dst = out + (size_t)(py - r0) * prow;                                           \
            if (POOL_FUSED_FN_##FUSE(SUFFIX)(k, py, qa, qb, pacc, pmode, stream, dst)) k->nonfinite = 1; \
            const int edges[2][2] = {{0, qa}, {qb, opw}};                                          \
            for (int e = 0; e < 2; e++) {                                                          \
                const int e0 = edges[e][0], e1 = edges[e][1];                                      \
                if (e0 >= e1) continue;                                                            \
                k->ox0 = e0 * pw;                                                                  \
                k->ox1 = e1 * pw;                                                                  \
                for (int t = 0; t < ph; t++) conv_row_##SUFFIX(k, py * ph + t, rows + (size_t)t * rowlen); \
                pool_out_##SUFFIX(rows, rowlen, ph, pw, k->nmaps, e0, e1 - e0, pacc, pmode, stream, dst); \
            }                                                                                      \
        }                                                                                          \
        for (int py = r0; py < r1 && !whole && !fuse; py++) {                                      \
            float *dst = out + (size_t)(py - r0) * prow;                                           \
            int c0 = 0, q0 = 0;                                                                    \
            while (q0 < opw) {                                                                     \
                int c1 = used;                                                                     \
                const int start = c0 > k->ix0 ? c0 : k->ix0;                                       \
                if (start + POOL_TILE_COLUMNS <= inner_end) c1 = start + POOL_TILE_COLUMNS;        \
                k->ox0 = c0;                                                                       \
                k->ox1 = c1;                                                                       \
                for (int t = 0; t < ph; t++) conv_row_##SUFFIX(k, py * ph + t, rows + (size_t)t * rowlen); \
                const int nq = c1 / pw - q0;  /* the windows now complete */                       \
                pool_out_##SUFFIX(rows, rowlen, ph, pw, k->nmaps, q0, nq, pacc, pmode, stream, dst); \
                q0 += nq;                                                                          \
                c0 = c1;                                                                           \
            }                                                                                      \
        }                                                                                          \
        if (stream) STORE_FENCE();                                                                 \
        scratch_done(SCRATCH_POOL, rows);                                                          \
        return 0;                                                                                  \
    }

CONV_ROW(base, , 3, 2, 4, 3)
POOL_TILE(base, )
POOL_OUT(base, )
BANDS(base, , 0)
#if MULTI_ISA
CONV_ROW(avx2, TARGET("arch=x86-64-v3"), 6, 4, 8, 6)
POOL_TILE(avx2, TARGET("arch=x86-64-v3"))
POOL_OUT(avx2, TARGET("arch=x86-64-v3"))
BANDS(avx2, TARGET("arch=x86-64-v3"), 0)
CONV_ROW(avx512, TARGET("arch=x86-64-v4"), 8, 8, 16, 16)
POOL_TILE(avx512, TARGET("arch=x86-64-v4"))
POOL_OUT(avx512, TARGET("arch=x86-64-v4"))
POOL_FUSED(avx512, TARGET("arch=x86-64-v4"))
BANDS(avx512, TARGET("arch=x86-64-v4"), 1)
#endif

/* ------------------------------------------------------------------ separable (rank-1) path
 *
 * Map m (of nmaps) reads channel m / mult (depthwise: mult = filters per channel; a 2-D
 * kernel on one channel: mult = nmaps) through the kernel u_m v_mᵀ. Each padded input row
 * the band needs is expanded to nmaps lanes per column (border columns through the column
 * map), then its horizontal pass h[ox, m] = sum_j v_m[j] e[ox·sw + j·dw, m] goes into a ring
 * of per-thread rows tagged by padded row; an output row is sum_i u_m[i] h[oy·sh + i·dh, m],
 * then the bias and activation. Each output value is formed in one fixed order from rows
 * that depend only on the input, so a band's bits do not depend on the band cut. Weights
 * and bias come as lane patterns of P = 16·nmaps floats (lane t holds map t mod nmaps), so
 * the flattened row (pixel, map) runs in plain 16-lane vectors. */
/* Ring bytes per column tile: L1-sized for short kernels (W5's 3x3 Sobel on one core: 3.3 ms
 * against 3.7 ms in whole rows), whole rows from L2 for tall ones (W3's 31 rows: 14.6 ms
 * against 23 ms in L1-sized tiles, whose every band restarts 30 rows of horizontal work). */
#define SEP_TILE_BYTES (24 << 10)
#define SEP_TALL_ROWS 8
#define SEP_TALL_TILE_BYTES (1 << 20)
/* Outputs from this size on (bytes per call) are written with non-temporal stores. */
#define SEP_STREAM_BYTES (4 << 20)
#define SEP_MIN_TILE 1

typedef struct {
    const float *x;
    int H, W, C;
    const float *u, *v;    /* kh x P, kw x P lane patterns */
    const float *bias;     /* P */
    const int32_t *rowmap, *colmap;
    Py_ssize_t ncolmap;
    int kh, kw, sh, sw, dh, dw, ow, nmaps, mult, left, act;
    float slope;
    int pw;                /* padded columns the output reads */
    size_t P, hlen, elen;  /* floats of a pattern, a horizontal row (whole patterns), an expanded row */
    float *e, *ring;
    int *tags;
    int nslots;
    int t0, t1, tile;      /* groups (of P floats) of the column tile now; groups per tile */
    float *orow;           /* a finished output row (64-byte aligned), before its copy out */
    int stream;            /* copy rows out with non-temporal stores (large outputs) */
    int fuse;              /* finish rows in registers (sep_finish) where the activation allows */
    int nonfinite;
} Sep;

/* Padded columns [c0, c1) of padded row pr (input row r) expanded into k->e:
 * e[pc·nmaps + m] = x[r, colmap[pc], m / mult] (0 where the map says -1). */
INLINE void sep_expand(Sep *k, int r, int c0, int c1) {
    const int nm = k->nmaps, C = k->C;
    const float *xr = k->x + (size_t)r * k->W * C;
    float *e = k->e;
    if (c1 > k->pw) c1 = k->pw;
    int lo = k->left > c0 ? k->left : c0, hi = k->left + k->W < c1 ? k->left + k->W : c1;
    if (hi < lo) hi = lo;
    if (k->mult == 1 && hi > lo) /* the inside: the input row itself */
        memcpy(e + (size_t)lo * nm, xr + (size_t)(lo - k->left) * C, sizeof(float) * (size_t)(hi - lo) * C);
    for (int pc = c0; pc < c1; pc++) {
        if (k->mult == 1 && pc == lo && hi > lo) pc = hi;
        if (pc >= c1) break;
        const int src = pc < k->ncolmap ? k->colmap[pc] : -1;
        float *o = e + (size_t)pc * nm;
        if (src < 0) {
            memset(o, 0, sizeof(float) * (size_t)nm);
            continue;
        }
        const float *px = xr + (size_t)src * C;
        if (k->mult == 1) memcpy(o, px, sizeof(float) * (size_t)nm);
        else
            for (int m = 0; m < nm; m++) o[m] = px[m / k->mult];
    }
}

/* acc[u] = sum_t src[t][o + u·P] · pat[t][16·q ...] for u < NU, the n taps added in order
 * t = 0, 1, ... (the sum of every separable pass, finished or not), each pattern vector
 * loaded once for the NU groups. */
#define SEP_TAPS(NU, acc, src, pat, n, o, q, P)                                                    \
    for (int u = 0; u < (NU); u++) (acc)[u] = (v16){0};                                            \
    for (int t = 0; t < (n); t++) {                                                                \
        v16 b;                                                                                     \
        memcpy(&b, (pat)[t] + 16 * (size_t)(q), sizeof b);                                         \
        for (int u = 0; u < (NU); u++) {                                                           \
            v16 a;                                                                                 \
            memcpy(&a, (src)[t] + (o) + u * (P), sizeof a);                                        \
            (acc)[u] += a * b;                                                                     \
        }                                                                                          \
    }

/* ReLU or abs on a finished vector's lane bits w (the scalar pass's exact results). */
#define SEP_ACTIVATE(w, act)                                                                       \
    do {                                                                                           \
        if ((act) == ACT_ABS) (w) &= 0x7fffffff;                                                   \
        else if ((act) == ACT_RELU) (w) = RELU_BITS(w);                                            \
    } while (0)

/* A 1-D pass over len floats (whole groups of P = 16·nm): dst[o] = sum_t src[t][o] · pat[t][o mod P]
 * (+ bias[o mod P]), stored below valid only; the tap count NT fixed at compile time (0: the
 * run-time count nt), so short kernels unroll. The taps are added in order t = 0, 1, ... */
#define SEP_PASS(NT)                                                                               \
    INLINE void sep_pass_##NT(const float *const *src, const float *const *pat, int nt, int nm,    \
                              size_t len, const float *bias, float *dst, size_t valid,             \
                              const float *pf) {                                                   \
        const int n = NT ? NT : nt;                                                                \
        const size_t P = (size_t)16 * nm;                                                          \
        size_t g = 0;                                                                              \
        /* four groups at once where they are all stored whole: each pattern vector loaded once */ \
        for (; g + 4 * P <= len && g + 4 * P <= valid; g += 4 * P)                                 \
            for (int q = 0; q < nm; q++) {                                                         \
                const size_t o = g + 16 * (size_t)q;                                               \
                v16 acc[4];                                                                        \
                if (pf)                                                                            \
                    for (int u = 0; u < 4; u++) __builtin_prefetch(pf + o + u * P, 0, 3);          \
                SEP_TAPS(4, acc, src, pat, n, o, q, P)                                             \
                if (bias) {                                                                        \
                    v16 bv;                                                                        \
                    memcpy(&bv, bias + 16 * (size_t)q, sizeof bv);                                 \
                    for (int u = 0; u < 4; u++) acc[u] += bv;                                      \
                }                                                                                  \
                for (int u = 0; u < 4; u++) memcpy(dst + o + u * P, &acc[u], sizeof(v16));         \
            }                                                                                      \
        for (; g < len; g += P)                                                                    \
            for (int q = 0; q < nm; q++) {                                                         \
                const size_t o = g + 16 * (size_t)q;                                               \
                if (o >= valid) return;                                                            \
                v16 acc[1];                                                                        \
                if (pf) __builtin_prefetch(pf + o, 0, 3);                                          \
                SEP_TAPS(1, acc, src, pat, n, o, q, P)                                             \
                if (bias) {                                                                        \
                    v16 bv;                                                                        \
                    memcpy(&bv, bias + 16 * (size_t)q, sizeof bv);                                 \
                    acc[0] += bv;                                                                  \
                }                                                                                  \
                memcpy(dst + o, &acc[0], sizeof(float) * (o + 16 <= valid ? 16 : valid - o));      \
            }                                                                                      \
    }
SEP_PASS(0)
SEP_PASS(1)
SEP_PASS(2)
SEP_PASS(3)
SEP_PASS(4)
SEP_PASS(5)
SEP_PASS(6)
SEP_PASS(7)

INLINE void sep_pass(const float *const *src, const float *const *pat, int nt, int nm, size_t len,
                     const float *bias, float *dst, size_t valid, const float *pf) {
    switch (nt) {
    case 1: sep_pass_1(src, pat, nt, nm, len, bias, dst, valid, pf); break;
    case 2: sep_pass_2(src, pat, nt, nm, len, bias, dst, valid, pf); break;
    case 3: sep_pass_3(src, pat, nt, nm, len, bias, dst, valid, pf); break;
    case 4: sep_pass_4(src, pat, nt, nm, len, bias, dst, valid, pf); break;
    case 5: sep_pass_5(src, pat, nt, nm, len, bias, dst, valid, pf); break;
    case 6: sep_pass_6(src, pat, nt, nm, len, bias, dst, valid, pf); break;
    case 7: sep_pass_7(src, pat, nt, nm, len, bias, dst, valid, pf); break;
    default: sep_pass_0(src, pat, nt, nm, len, bias, dst, valid, pf);
    }
}


#define SEP_ROWS(SUFFIX, ATTR)                                                                     \
    /* The horizontal pass of padded row pr (its input row r), from the ring or computed now. */   \
    ATTR static const float *sep_hrow_##SUFFIX(Sep *k, int pr, int r) {                            \
        const int slot = pr % k->nslots;                                                           \
        float *h = k->ring + (size_t)slot * k->hlen;                                               \
        if (k->tags[slot] == pr) return h;                                                         \
        k->tags[slot] = pr;                                                                        \
        const size_t P = k->P;                                                                     \
        const int nm = k->nmaps, kw = k->kw;                                                       \
        if (k->sw == 1) {                                                                          \
            const size_t jstep = (size_t)k->dw * nm, halo = (size_t)(kw - 1) * jstep;              \
            /* Groups [g0, g1) of this tile; those whose reads all lie inside the image read the \
               input row itself (one channel per map), the others an expanded copy. */          \
            const size_t g0 = (size_t)k->t0 * P, g1 = (size_t)k->t1 * P;                           \
            size_t in0 = g1, in1 = g1;                                                             \
            if (k->mult == 1) {                                                                    \
                const size_t lo = (size_t)k->left * nm, hi = (size_t)(k->left + k->W) * nm;        \
                size_t a = lo > g0 ? (lo - g0 + P - 1) / P * P + g0 : g0;                          \
                size_t b = a;                                                                      \
                while (b < g1 && b + P + halo <= hi) b += P;                                       \
                if (b > a) in0 = a, in1 = b;                                                       \
            }                                                                                      \
            /* the expanded copy where needed: columns read by [g0, in0) and [in1, g1) */         \
            if (in0 > g0) sep_expand(k, r, (int)(g0 / nm), (int)((in0 + halo + nm - 1) / nm));   \
            if (g1 > in1) sep_expand(k, r, (int)(in1 / nm), (int)((g1 + halo + nm - 1) / nm));   \
            const float *xr = k->x + (size_t)r * k->W * k->C;                                      \
            const float *src[64], *pat[64];                                                        \
            for (int j = 0; j < kw; j++) pat[j] = k->v + (size_t)j * P;                            \
            /* [g0, in0) and [in1, g1) from the expanded copy, [in0, in1) from the input row */   \
            if (in0 > g0) {                                                                        \
                for (int j = 0; j < kw; j++) src[j] = k->e + g0 + j * jstep;                       \
                sep_pass((const float *const *)src, (const float *const *)pat, kw, nm, in0 - g0, NULL, h + g0, in0 - g0, NULL);                      \
            }                                                                                      \
            if (in1 > in0) {                                                                       \
                for (int j = 0; j < kw; j++) src[j] = xr + (in0 - (size_t)k->left * nm) + j * jstep; \
                sep_pass((const float *const *)src, (const float *const *)pat, kw, nm, in1 - in0, NULL, h + in0, in1 - in0,                \
                         r + 1 < k->H ? src[0] + (size_t)k->W * k->C : NULL);                   \
            }                                                                                      \
            if (g1 > in1) {                                                                        \
                for (int j = 0; j < kw; j++) src[j] = k->e + in1 + j * jstep;                      \
                sep_pass((const float *const *)src, (const float *const *)pat, kw, nm, g1 - in1, NULL, h + in1, g1 - in1, NULL);                     \
            }                                                                                      \
        } else {                                                                                   \
            /* output columns [16·t0, 16·t1) read padded columns from 16·t0·sw on */               \
            sep_expand(k, r, 16 * k->t0 * k->sw, 16 * k->t1 * k->sw + (kw - 1) * k->dw + 1);       \
            const float *restrict e = k->e;                                                        \
            const size_t t1 = (size_t)k->t1 * P < (size_t)k->ow * nm ? (size_t)k->t1 * P : (size_t)k->ow * nm; \
            for (size_t t = (size_t)k->t0 * P; t < t1; t++) {                                      \
                const size_t ox = t / nm, m = t % nm, l = t % P;                                   \
                float acc = 0.0f;                                                                  \
                for (int j = 0; j < kw; j++)                                                       \
                    acc += e[(ox * k->sw + (size_t)j * k->dw) * nm + m] * k->v[j * P + l];         \
                h[t] = acc;                                                                        \
            }                                                                                      \
        }                                                                                          \
        return h;                                                                                  \
    }                                                                                              \
                                                                                                   \
    ATTR static int sep_bands_##SUFFIX(Sep *k, float *out, int r0, int r1) {                       \
        const float *rows[64];                                                                     \
        const float *uu[64];                                                                       \
        const size_t P = k->P, n = (size_t)k->ow * k->nmaps;                                       \
        const int nm = k->nmaps, ngroups = (int)(k->hlen / P);                                     \
        /* Column tiles (whole groups) whose ring rows stay in L1 while the band passes. */        \
        for (int t0 = 0; t0 < ngroups; t0 += k->tile) {                                            \
            k->t0 = t0;                                                                            \
            k->t1 = t0 + k->tile < ngroups ? t0 + k->tile : ngroups;                               \
            for (int i = 0; i < k->nslots; i++) k->tags[i] = -1;                                   \
            const size_t e0 = (size_t)k->t0 * P, e1 = (size_t)k->t1 * P < n ? (size_t)k->t1 * P : n; \
            for (int oy = r0; oy < r1; oy++) {                                                     \
                int nr = 0;                                                                        \
                for (int i = 0; i < k->kh; i++) {                                                  \
                    const int pr = oy * k->sh + i * k->dh;                                         \
                    const int r = k->rowmap[pr];                                                   \
                    if (r < 0) continue;                                                           \
                    rows[nr] = sep_hrow_##SUFFIX(k, pr, r);                                        \
                    uu[nr++] = k->u + (size_t)i * P;                                               \
                }                                                                                  \
                float *dst = out + (size_t)(oy - r0) * n;                                          \
                for (int i = 0; i < nr; i++) rows[i] += e0;                                        \
                if (k->fuse && PLANAR_FUSES(k->act)) {                                             \
                    /* non-temporal stores straight from registers where the row is aligned */    \
                    const int nt = k->stream && !((uintptr_t)dst & 63);                            \
                    float *fin = k->stream && !nt ? k->orow : dst;                                 \
                    if (sep_finish_##SUFFIX(k, rows, nr, uu, fin + e0, e1 - e0, nt)) k->nonfinite = 1; \
                    if (k->stream && !nt) stream_copy(dst + e0, fin + e0, e1 - e0);                \
                    continue;                                                                      \
                }                                                                                  \
                float *fin = k->stream ? k->orow : dst;                                            \
                sep_pass((const float *const *)rows, (const float *const *)uu, nr, nm, (size_t)(k->t1 - k->t0) * P, k->bias, fin + e0, e1 - e0, NULL); \
                if (k->act) {                                                                      \
                    Conv c;                                                                        \
                    c.act = k->act;                                                                \
                    c.slope = k->slope;                                                            \
                    activate_row(&c, fin + e0, e1 - e0);                                           \
                }                                                                                  \
                if (!k->nonfinite) k->nonfinite = any_nonfinite(fin + e0, e1 - e0);                \
                if (k->stream) stream_copy(dst + e0, fin + e0, e1 - e0);                           \
            }                                                                                      \
        }                                                                                          \
        STORE_FENCE();                                                                             \
        return 0;                                                                                  \
    }

/* 16 floats to 64-byte aligned d with a non-temporal store, per instruction set. */
#if defined(__x86_64__) || defined(__i386__)
#define STREAM16_base(d, a)                                                                        \
    do {                                                                                           \
        __m128 s_[4];                                                                              \
        memcpy(s_, &(a), sizeof s_);                                                               \
        for (int i_ = 0; i_ < 4; i_++) _mm_stream_ps((d) + 4 * i_, s_[i_]);                        \
    } while (0)
#else
#define STREAM16_base(d, a) memcpy((d), &(a), 64)
#endif
#define STREAM16_avx2(d, a)                                                                        \
    do {                                                                                           \
        __m256 s_[2];                                                                              \
        memcpy(s_, &(a), sizeof s_);                                                               \
        _mm256_stream_ps((d), s_[0]);                                                              \
        _mm256_stream_ps((d) + 8, s_[1]);                                                          \
    } while (0)
#define STREAM16_avx512(d, a)                                                                      \
    do {                                                                                           \
        __m512 s_;                                                                                 \
        memcpy(&s_, &(a), sizeof s_);                                                              \
        _mm512_stream_ps((d), s_);                                                                 \
    } while (0)

/* sep_pass with the finish in registers (bias, ReLU or abs, the Inf/NaN test), each vector
 * stored once: dst[o] = sum_t src[t][o] · pat[t][o mod P] + bias[o mod P] for o in [0, len),
 * the taps in order (sep_pass's sums, bit for bit). nt: dst is 64-byte aligned and takes
 * non-temporal stores. Returns whether a stored value is Inf or NaN. */
#define SEP_FINISH(SUFFIX, ATTR, KW)                                                               \
    ATTR static int sep_finish_##KW##_##SUFFIX(const Sep *k, const float *const *src, int nt_,     \
                                                const float *const *vp, float *restrict dst,      \
                                                size_t len, int nt) {                              \
        const int kw = KW ? KW : nt_, nm = k->nmaps, act = k->act;                                 \
        const size_t P = k->P;                                                                     \
        vi16 any = {0};                                                                            \
        size_t g = 0;                                                                              \
        for (; g + 4 * P <= len; g += 4 * P)                                                       \
            for (int q = 0; q < nm; q++) {                                                         \
                const size_t o = g + 16 * (size_t)q;                                               \
                v16 acc[4];                                                                        \
                SEP_TAPS(4, acc, src, vp, kw, o, q, P)                                             \
                v16 bv;                                                                            \
                memcpy(&bv, k->bias + 16 * (size_t)q, sizeof bv);                                  \
                for (int u = 0; u < 4; u++) {                                                      \
                    acc[u] += bv;                                                                  \
                    vi16 w;                                                                        \
                    memcpy(&w, &acc[u], sizeof w);                                                 \
                    SEP_ACTIVATE(w, act);                                                          \
                    any |= NONFINITE_BIT(w);                                                       \
                    memcpy(&acc[u], &w, sizeof w);                                                 \
                    if (nt) STREAM16_##SUFFIX(dst + o + u * P, acc[u]);                            \
                    else memcpy(dst + o + u * P, &acc[u], sizeof(v16));                            \
                }                                                                                  \
            }                                                                                      \
        int bad = !vec_all_zero_16(any & 0x100);                                                   \
        for (; g < len; g += P)                                                                    \
            for (int q = 0; q < nm; q++) {                                                         \
                const size_t o = g + 16 * (size_t)q;                                               \
                if (o >= len) break;                                                               \
                v16 acc[1];                                                                        \
                SEP_TAPS(1, acc, src, vp, kw, o, q, P)                                             \
                v16 bv;                                                                            \
                memcpy(&bv, k->bias + 16 * (size_t)q, sizeof bv);                                  \
                acc[0] += bv;                                                                      \
                vi16 w;                                                                            \
                memcpy(&w, &acc[0], sizeof w);                                                     \
                SEP_ACTIVATE(w, act);                                                              \
                v16 fin;                                                                           \
                memcpy(&fin, &w, sizeof w);                                                        \
                if (o + 16 <= len) {                                                               \
                    if (nt) STREAM16_##SUFFIX(dst + o, fin);                                       \
                    else memcpy(dst + o, &fin, sizeof fin);                                        \
                    bad |= !vec_all_zero_16(NONFINITE_BIT(w) & 0x100);                             \
                } else {                                                                           \
                    memcpy(dst + o, &fin, sizeof(float) * (len - o));                              \
                    bad |= any_nonfinite(dst + o, len - o);                                        \
                }                                                                                  \
            }                                                                                      \
        return bad;                                                                                \
    }
#define SEP_FINISHES(SUFFIX, ATTR)                                                                 \
    SEP_FINISH(SUFFIX, ATTR, 0)                                                                    \
    SEP_FINISH(SUFFIX, ATTR, 1)                                                                    \
    SEP_FINISH(SUFFIX, ATTR, 2)                                                                    \
    SEP_FINISH(SUFFIX, ATTR, 3)                                                                    \
    SEP_FINISH(SUFFIX, ATTR, 5)                                                                    \
    ATTR static int sep_finish_##SUFFIX(const Sep *k, const float *const *src, int nt_,            \
                                         const float *const *vp, float *dst, size_t len, int nt) { \
        switch (nt_) {                                                                             \
        case 1: return sep_finish_1_##SUFFIX(k, src, nt_, vp, dst, len, nt);                       \
        case 2: return sep_finish_2_##SUFFIX(k, src, nt_, vp, dst, len, nt);                       \
        case 3: return sep_finish_3_##SUFFIX(k, src, nt_, vp, dst, len, nt);                       \
        case 5: return sep_finish_5_##SUFFIX(k, src, nt_, vp, dst, len, nt);                       \
        default: return sep_finish_0_##SUFFIX(k, src, nt_, vp, dst, len, nt);                      \
        }                                                                                          \
    }

SEP_FINISHES(base, )
#if MULTI_ISA
SEP_FINISHES(avx2, TARGET("arch=x86-64-v3"))
SEP_FINISHES(avx512, TARGET("arch=x86-64-v4"))
#endif

SEP_ROWS(base, )
#if MULTI_ISA
SEP_ROWS(avx2, TARGET("arch=x86-64-v3"))
SEP_ROWS(avx512, TARGET("arch=x86-64-v4"))
#endif

typedef int (*bands_fn)(Conv *, float *, int, int, int, int, int, int);
static bands_fn bands = bands_base;
typedef int (*sep_fn)(Sep *, float *, int, int);
static sep_fn sep_bands = sep_bands_base;
static const char *isa_name = "baseline";

static void pick_isa(void) {
#if MULTI_ISA
    __builtin_cpu_init();
    const char *force = getenv("CONVCLI_CCORE_ISA");
    int want = force && !strcmp(force, "baseline") ? 0 : force && !strcmp(force, "avx2") ? 1 : 2;
    if (want >= 2 && __builtin_cpu_supports("x86-64-v4")) {
        bands = bands_avx512;
        sep_bands = sep_bands_avx512;
        isa_name = "avx512";
    } else if (want >= 1 && __builtin_cpu_supports("x86-64-v3")) {
        bands = bands_avx2;
        sep_bands = sep_bands_avx2;
        isa_name = "avx2";
    }
#endif
}

/* ------------------------------------------------------------------ Python binding */

static int get_buf(PyObject *obj, Py_buffer *view, int writable, Py_ssize_t min_items, const char *name) {
    int flags = PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0) return -1;
    if (view->itemsize != 4 || view->len < min_items * 4) {
        PyErr_Format(PyExc_ValueError, "%s: expected at least %zd 4-byte items, got %zd bytes of %zd-byte items",
                     name, min_items, view->len, view->itemsize);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static const char rows_doc[] =
    "rows(x, w, bias, out, rowmap, colmap, geom, act, slope, r0, r1, pool, stream=False)\n\n"
    "Output rows [r0, r1) of one layer into out (C-contiguous float32). geom is the int tuple\n"
    "(H, W, C, kh, kw, sh, sw, dh, dw, ow, nmaps, vf, depthwise, mult, left, mode); pool is\n"
    "(mode, ph, pw) with mode 0 none, 1 max, 2 avg (valid, stride = size; r0, r1 are then\n"
    "pooled rows). stream: write pooled rows with non-temporal stores (large outputs).\n"
    "Arguments are checked by convcli.engine.ccore; the GIL is released.\n"
    "Returns whether a finished value is Inf or NaN (float32 overflow).";

static PyObject *py_rows(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *ox, *ow_, *ob, *oo, *orm, *ocm;
    Conv k;
    int act, r0, r1, pmode, ph, pw, stream = 0;
    float slope;
    memset(&k, 0, sizeof k);
    if (!PyArg_ParseTuple(args, "OOOOOO(iiiiiiiiiiiiiiii)ifii(iii)|p", &ox, &ow_, &ob, &oo, &orm, &ocm, &k.H, &k.W,
                          &k.C, &k.kh, &k.kw, &k.sh, &k.sw, &k.dh, &k.dw, &k.ow, &k.nmaps, &k.vf, &k.depthwise,
                          &k.mult, &k.left, &k.mode, &act, &slope, &r0, &r1, &pmode, &ph, &pw, &stream))
        return NULL;
    if (k.H < 1 || k.W < 1 || k.C < 1 || k.kh < 1 || k.kw < 1 || k.sh < 1 || k.sw < 1 || k.dh < 1 || k.dw < 1 ||
        k.ow < 1 || k.nmaps < 1 || k.mult < 1 || r0 < 0 || r1 < r0 || k.left < 0 || pmode < 0 || pmode > 2 ||
        (pmode && (ph < 1 || pw < 1 || pw > k.ow)) || k.mode < 0 || k.mode > 3 || act < 0 || act > 5 ||
        (k.depthwise && k.nmaps != k.C * k.mult) || (!k.depthwise && k.mode == MODE_GATHER) || (k.mode == MODE_PLANAR && (k.depthwise || k.nmaps > 8))) {
        PyErr_SetString(PyExc_ValueError, "_ccore.rows: bad geometry");
        return NULL;
    }
    if ((k.mode == MODE_EXPAND || k.mode == MODE_PLANAR) && k.kw > 64) {
        PyErr_SetString(PyExc_ValueError, "_ccore.rows: the expand kernel takes at most 64 kernel columns");
        return NULL;
    }
    if (k.mode == MODE_PLANAR ? k.vf != 1
        : k.mode == MODE_EXPAND ? (k.vf != 1 && k.vf != 2 && k.vf != 4 && k.vf != 8 && k.vf != 16) ||
                                      (k.vf < 16 && k.nmaps > k.vf) || (!k.depthwise && k.vf == 16)
                                : k.vf != 16) {
        PyErr_SetString(PyExc_ValueError, "_ccore.rows: bad lane count");
        return NULL;
    }
    k.act = act;
    k.slope = slope;
    k.nb = (k.nmaps + k.vf - 1) / k.vf;
    Py_ssize_t wsize;
    if (k.mode == MODE_PLANAR) /* (kh, kw, C, nmaps) scalars */
        wsize = (Py_ssize_t)k.kh * k.kw * k.C * k.nmaps;
    else
        wsize = (Py_ssize_t)k.nb * k.kh * k.kw * (k.depthwise ? 1 : k.C) * 16;
    const int conv_rows = pmode ? r1 * ph : r1;
    const int opw = pmode ? k.ow / pw : k.ow;
    const Py_ssize_t padded_w = (Py_ssize_t)(k.ow - 1) * k.sw + (Py_ssize_t)(k.kw - 1) * k.dw + 1;
    const Py_ssize_t padded_h =
        conv_rows > 0 ? (Py_ssize_t)(conv_rows - 1) * k.sh + (Py_ssize_t)(k.kh - 1) * k.dh + 1 : 0;
    Py_buffer bx, bw, bb, bo, brm, bcm;
    if (get_buf(ox, &bx, 0, (Py_ssize_t)k.H * k.W * k.C, "x") < 0) return NULL;
    if (get_buf(ow_, &bw, 0, wsize, "w") < 0) goto fail_x;
    if (get_buf(ob, &bb, 0, (Py_ssize_t)k.nb * k.vf, "bias") < 0) goto fail_w;
    if (get_buf(oo, &bo, 1, (Py_ssize_t)(r1 - r0) * opw * k.nmaps, "out") < 0) goto fail_b;
    if (get_buf(orm, &brm, 0, padded_h, "rowmap") < 0) goto fail_o;
    if (get_buf(ocm, &bcm, 0, padded_w, "colmap") < 0) goto fail_rm;
    k.x = (const float *)bx.buf;
    k.w = (const float *)bw.buf;
    k.bias = (const float *)bb.buf;
    k.rowmap = (const int32_t *)brm.buf;
    k.colmap = (const int32_t *)bcm.buf;
    k.ncolmap = bcm.len / 4;
    /* Interior columns: every tap's padded column inside [left, left + W). */
    k.ix0 = k.ow;
    k.ix1 = 0;
    for (int o = 0; o < k.ow; o++) {
        long lo = (long)o * k.sw, hi = lo + (long)(k.kw - 1) * k.dw;
        if (lo >= k.left && hi < (long)k.left + k.W) {
            if (o < k.ix0) k.ix0 = o;
            k.ix1 = o + 1;
        }
    }
    if (k.ix1 <= k.ix0) k.ix0 = k.ix1 = k.ow;
    /* The maps must point into the input (cheap next to the work). */
    const int32_t *rm = k.rowmap, *cm = k.colmap;
    int bad = 0;
    for (Py_ssize_t i = 0; i < padded_h; i++) bad |= rm[i] >= k.H || rm[i] < -1;
    for (Py_ssize_t i = 0; i < k.ncolmap; i++) bad |= cm[i] >= k.W || cm[i] < -1;
    float *out = (float *)bo.buf;
    int nomem = 0;
    if (!bad && (k.mode == MODE_EXPAND || k.mode == MODE_PLANAR)) {
        k.nplanes = k.depthwise ? k.nb : k.C;
        k.ncol = k.ow + MAX_EXPAND_PIXELS + (k.kw - 1) * k.dw / k.sw + 1;
        /* whole 64-byte lines per phase and plane: with a 64-byte aligned ring, tap column 0's
           vector loads do not cross lines */
        k.ncol = (k.ncol * k.vf + 15) / 16 * 16 / k.vf;
        k.plane = (size_t)k.sw * k.ncol * k.vf;
        k.rowsize = k.plane * k.nplanes;
        k.nslots = (k.kh - 1) * k.dh + 1;
        {   /* tiles of whole pixel blocks whose expanded rows fit in ~32 KB of L1 */
            const size_t per_col = (size_t)k.nslots * k.nplanes * k.sw * k.vf * sizeof(float);
            const int unit = MAX_EXPAND_VECTORS * 16 / k.vf;  /* a multiple of every build's block */
            int tile = (int)((32 << 10) / (per_col ? per_col : 1)) / unit * unit;
            k.tile = tile < unit ? unit : tile;
        }
        for (int l = 0; l < 16; l++) {
            const int keep = (16 / k.vf) * k.nmaps;
            k.cidx[l] = l < keep ? (l / k.nmaps) * k.vf + l % k.nmaps : 0;
        }
        for (int j = 0; j < k.kw && j < 64; j++)
            k.joff[j] = (j * k.dw) % k.sw * k.ncol * k.vf + (j * k.dw) / k.sw * k.vf;
        if (k.vf == 1 && k.sw >= 2 && k.sw * k.C <= 8) {  /* expanded_row's stride-phase split */
            const int n = k.sw * k.C;
            for (int o = 0; o < n; o++)  /* o = phase * C + channel */
                for (int m = 0; m < 4; m++)
                    for (int l = 0; l < 16; l++) {
                        const int at = l * n + o, inside = at >= 32 * m && at < 32 * m + 32;
                        k.pick[o][m][l] = inside ? at - 32 * m : 0;
                        k.merge[o][m][l] = inside ? 16 + l : l;
                    }
        }
        k.ring = scratch_get(SCRATCH_RING, sizeof(float) * k.rowsize * (size_t)k.nslots);
        k.tags = (int *)malloc(sizeof(int) * (size_t)k.nslots);
        if (!k.ring || !k.tags) nomem = 1;
        else {
            /* zeroed: the last vector of a row may read columns no row has written yet (its
               lanes past the row are never stored, but must not be stale heap bits: a
               denormal there costs a microcode assist per multiply-add) */
            memset(k.ring, 0, sizeof(float) * k.rowsize * (size_t)k.nslots);
            for (int i = 0; i < k.nslots; i++) k.tags[i] = -1;
        }
    }
    if (!bad && !nomem) {
        Py_BEGIN_ALLOW_THREADS
        nomem = bands(&k, out, r0, r1, pmode, ph, pw, stream) < 0;
        Py_END_ALLOW_THREADS
    }
    scratch_done(SCRATCH_RING, k.ring);
    free(k.tags);
    PyBuffer_Release(&bcm);
    PyBuffer_Release(&brm);
    PyBuffer_Release(&bo);
    PyBuffer_Release(&bb);
    PyBuffer_Release(&bw);
    PyBuffer_Release(&bx);
    if (bad) {
        PyErr_SetString(PyExc_ValueError, "_ccore.rows: rowmap/colmap index outside the input");
        return NULL;
    }
    if (nomem) return PyErr_NoMemory();
    return PyBool_FromLong(k.nonfinite);
fail_rm:
    PyBuffer_Release(&brm);
fail_o:
    PyBuffer_Release(&bo);
fail_b:
    PyBuffer_Release(&bb);
fail_w:
    PyBuffer_Release(&bw);
fail_x:
    PyBuffer_Release(&bx);
    return NULL;
}

static const char sep_doc[] =
    "sep_rows(x, u, v, bias, out, rowmap, colmap, geom, act, slope, r0, r1, stream=-1)\n\n"
    "Output rows [r0, r1) of a layer whose every map m has the rank-1 kernel u_m v_mT and reads\n"
    "channel m // mult, into out (C-contiguous float32, (r1 - r0) x ow x nmaps). u (kh x P),\n"
    "v (kw x P) and bias (P) are lane patterns, P = 16 * nmaps: entry t holds map t % nmaps.\n"
    "geom is (H, W, C, kh, kw, sh, sw, dh, dw, ow, nmaps, mult, left). stream: 1/0 write rows\n"
    "with non-temporal stores or not (-1: when this call's rows are 4 MB or more). The GIL is released.\n"
    "Returns whether a finished value is Inf or NaN.";

static PyObject *py_sep_rows(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *ox, *ou, *ov, *ob, *oo, *orm, *ocm;
    Sep k;
    int r0, r1, stream = -1;
    memset(&k, 0, sizeof k);
    if (!PyArg_ParseTuple(args, "OOOOOOO(iiiiiiiiiiiii)ifii|i", &ox, &ou, &ov, &ob, &oo, &orm, &ocm, &k.H, &k.W,
                          &k.C, &k.kh, &k.kw, &k.sh, &k.sw, &k.dh, &k.dw, &k.ow, &k.nmaps, &k.mult, &k.left,
                          &k.act, &k.slope, &r0, &r1, &stream))
        return NULL;
    if (k.H < 1 || k.W < 1 || k.C < 1 || k.kh < 1 || k.kw < 1 || k.kh > 64 || k.kw > 64 || k.sh < 1 || k.sw < 1 ||
        k.dh < 1 || k.dw < 1 || k.ow < 1 || k.nmaps < 1 || k.mult < 1 || k.nmaps != k.C * k.mult ||
        k.nmaps > 4096 || k.left < 0 || r0 < 0 || r1 < r0 || k.act < 0 || k.act > 5) {
        PyErr_SetString(PyExc_ValueError, "_ccore.sep_rows: bad geometry");
        return NULL;
    }
    k.P = (size_t)16 * k.nmaps;
    const size_t n = (size_t)k.ow * k.nmaps;
    k.hlen = (n + k.P - 1) / k.P * k.P;
    k.pw = (k.ow - 1) * k.sw + (k.kw - 1) * k.dw + 1;
    k.elen = (size_t)k.pw * k.nmaps;
    if (k.sw == 1 && k.elen < k.hlen + (size_t)(k.kw - 1) * k.dw * k.nmaps)
        k.elen = k.hlen + (size_t)(k.kw - 1) * k.dw * k.nmaps;
    k.nslots = (k.kh - 1) * k.dh + 1;
    {   /* column tiles: the ring's rows (and the expanded row) in about SEP_TILE_BYTES */
        const char *env = getenv("CONVCLI_SEP_TILE");
        const long budget = env ? atol(env) : k.nslots > SEP_TALL_ROWS ? SEP_TALL_TILE_BYTES : SEP_TILE_BYTES;
        long t = budget / (long)(sizeof(float) * k.P * (size_t)(k.nslots + 1));
        k.tile = t < SEP_MIN_TILE ? SEP_MIN_TILE : t > (1 << 20) ? (1 << 20) : (int)t;
    }
    const Py_ssize_t padded_h = r1 > 0 ? (Py_ssize_t)(r1 - 1) * k.sh + (Py_ssize_t)(k.kh - 1) * k.dh + 1 : 0;
    Py_buffer bx, bu, bv, bb, bo, brm, bcm;
    if (get_buf(ox, &bx, 0, (Py_ssize_t)k.H * k.W * k.C, "x") < 0) return NULL;
    if (get_buf(ou, &bu, 0, (Py_ssize_t)(k.kh * k.P), "u") < 0) goto fail_x;
    if (get_buf(ov, &bv, 0, (Py_ssize_t)(k.kw * k.P), "v") < 0) goto fail_u;
    if (get_buf(ob, &bb, 0, (Py_ssize_t)k.P, "bias") < 0) goto fail_v;
    if (get_buf(oo, &bo, 1, (Py_ssize_t)(r1 - r0) * (Py_ssize_t)n, "out") < 0) goto fail_b;
    if (get_buf(orm, &brm, 0, padded_h, "rowmap") < 0) goto fail_o;
    if (get_buf(ocm, &bcm, 0, k.pw, "colmap") < 0) goto fail_rm;
    k.x = (const float *)bx.buf;
    k.u = (const float *)bu.buf;
    k.v = (const float *)bv.buf;
    k.bias = (const float *)bb.buf;
    k.rowmap = (const int32_t *)brm.buf;
    k.colmap = (const int32_t *)bcm.buf;
    k.ncolmap = bcm.len / 4;
    int bad = 0, nomem = 0;
    for (Py_ssize_t i = 0; i < padded_h; i++) bad |= k.rowmap[i] >= k.H || k.rowmap[i] < -1;
    for (Py_ssize_t i = 0; i < k.ncolmap; i++) bad |= k.colmap[i] >= k.W || k.colmap[i] < -1;
    /* Inside columns must map to themselves (the expansion copies them as one run). */
    for (int pc = k.left; pc < k.left + k.W && pc < k.ncolmap; pc++) bad |= k.colmap[pc] != pc - k.left;
    if (!bad) {
        /* 64-byte aligned (whole groups of rows are whole lines: the vertical pass's loads
           do not cross lines), zeroed (the expanded row's columns past the image stay 0) */
        const size_t ebytes = (sizeof(float) * (k.elen + 16) + 63) / 64 * 64;
        const size_t rbytes = (sizeof(float) * (k.hlen * (size_t)k.nslots + 16) + 63) / 64 * 64;
        k.e = (float *)aligned_alloc(64, ebytes);
        k.ring = (float *)aligned_alloc(64, rbytes);
        if (k.e) memset(k.e, 0, ebytes);
        if (k.ring) memset(k.ring, 0, rbytes);
        k.tags = (int *)malloc(sizeof(int) * (size_t)k.nslots);
        {
            const char *env = getenv("CONVCLI_SEP_STREAM");
            const double bytes = 4.0 * (double)(r1 - r0) * (double)n;
            k.stream = env ? atoi(env) : stream >= 0 ? stream : bytes >= SEP_STREAM_BYTES;
            const char *fuse = getenv("CONVCLI_SEP_FUSE");
            k.fuse = fuse ? atoi(fuse) : 1;
        }
        if (k.stream) k.orow = (float *)aligned_alloc(64, (sizeof(float) * k.hlen + 63) / 64 * 64);
        if (!k.e || !k.ring || !k.tags || (k.stream && !k.orow)) nomem = 1;
        else {
            for (int i = 0; i < k.nslots; i++) k.tags[i] = -1;
            Py_BEGIN_ALLOW_THREADS
            sep_bands(&k, (float *)bo.buf, r0, r1);
            Py_END_ALLOW_THREADS
        }
    }
    free(k.e);
    free(k.ring);
    free(k.tags);
    free(k.orow);
    PyBuffer_Release(&bcm);
    PyBuffer_Release(&brm);
    PyBuffer_Release(&bo);
    PyBuffer_Release(&bb);
    PyBuffer_Release(&bv);
    PyBuffer_Release(&bu);
    PyBuffer_Release(&bx);
    if (bad) {
        PyErr_SetString(PyExc_ValueError, "_ccore.sep_rows: rowmap/colmap index outside the input");
        return NULL;
    }
    if (nomem) return PyErr_NoMemory();
    return PyBool_FromLong(k.nonfinite);
fail_rm:
    PyBuffer_Release(&brm);
fail_o:
    PyBuffer_Release(&bo);
fail_b:
    PyBuffer_Release(&bb);
fail_v:
    PyBuffer_Release(&bv);
fail_u:
    PyBuffer_Release(&bu);
fail_x:
    PyBuffer_Release(&bx);
    return NULL;
}

static PyMethodDef methods[] = {
    {"rows", py_rows, METH_VARARGS, rows_doc},
    {"sep_rows", py_sep_rows, METH_VARARGS, sep_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_ccore",
    "convcli's compiled direct-convolution core (see convcli.engine.ccore).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__ccore(void) {
    pick_isa();
    if (!scratch_key_ok) scratch_key_ok = pthread_key_create(&scratch_key, scratch_free) == 0;
    PyObject *m = PyModule_Create(&module);
    if (m && PyModule_AddStringConstant(m, "ISA", isa_name) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
