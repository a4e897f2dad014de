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
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef float v1 __attribute__((vector_size(4), aligned(4)));
typedef float v2 __attribute__((vector_size(8), aligned(4)));
typedef float v4 __attribute__((vector_size(16), aligned(4)));
typedef float v8 __attribute__((vector_size(32), aligned(4)));
typedef float v16 __attribute__((vector_size(64), aligned(4)));
typedef int vi16 __attribute__((vector_size(64), aligned(4)));

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#define MULTI_ISA 1
#define TARGET(t) __attribute__((target(t)))
#else
#define MULTI_ISA 0
#define TARGET(t)
#endif

#define INLINE static inline __attribute__((always_inline))
/* Largest pixel block of the expand kernel over all builds (columns an expanded row keeps past ow). */
#define MAX_EXPAND_PIXELS 128
/* Largest number of vectors in one expand block over all builds. */
#define MAX_EXPAND_VECTORS 8

enum { ACT_NONE = 0, ACT_RELU, ACT_LEAKY, ACT_SIGMOID, ACT_TANH, ACT_ABS };
enum { POOL_NONE = 0, POOL_MAX, POOL_AVG };
enum { MODE_BROADCAST = 0, MODE_EXPAND = 1, MODE_GATHER = 2 };

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
} Conv;

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

#define DENSE_BLOCKS(PX)                                                                           \
    DENSE_BLOCK(v16, 16, PX, 0)                                                                    \
    DENSE_BLOCK(v16, 16, PX, 1)                                                                    \
    DENSE_BLOCK(v16, 16, PX, 2)                                                                    \
    DENSE_BLOCK(v16, 16, PX, 3)                                                                    \
    DENSE_BLOCK(v16, 16, PX, 4)                                                                    \
    DENSE_BLOCK(v16, 16, PX, 6)                                                                    \
    DENSE_BLOCK(v16, 16, PX, 8)
DENSE_BLOCKS(8)
DENSE_BLOCKS(6)
DENSE_BLOCKS(3)
DENSE_EDGE(v16, 16)
EXPAND_BLOCK(8)
EXPAND_BLOCK(4)
EXPAND_BLOCK(2)

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

/* The expanded padded row pr (its input row r >= 0), from the ring or built now. */
INLINE const float *expanded_row(Conv *k, int pr, int r) {
    const int slot = pr % k->nslots;
    float *e = k->ring + (size_t)slot * k->rowsize;
    if (k->tags[slot] == pr) return e;
    k->tags[slot] = pr;
    const float *xr = k->x + (size_t)r * k->W * k->C;
    if (r + 1 < k->H) {
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

/* Output row oy (all columns, all maps) into dst (ow x nmaps), finished with the activation.
 * PXB, PXE: pixel blocks of the broadcast and expand kernels for this instruction set. */
#define CONV_ROW(SUFFIX, ATTR, PXB, PXE)                                                           \
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
            else if (k->mode == MODE_EXPAND) rp[i] = expanded_row(k, pr, r);                       \
            else rp[i] = k->x + (size_t)r * k->W * k->C;                                           \
        }                                                                                          \
        const float *const *rr = (const float *const *)rp;                                         \
        if (k->mode == MODE_EXPAND) {                                                              \
            float tail[16];                                                                        \
            const int step = PXE * (16 / k->vf);                                                   \
            for (int b = 0; b < k->nb; b++)                                                        \
                for (int ox = k->ox0; ox < k->ox1; ox += step) expand_##PXE(k, rr, ox, b, dst, tail); \
        } else if (k->mode == MODE_BROADCAST) {                                                    \
            for (int b = 0; b < k->nb; b++) {                                                      \
                int ox = 0;                                                                        \
                for (; ox < k->ix0 && ox < k->ow; ox++) dense_edge_16(k, rr, ox, b, dst);          \
                switch (k->sw * k->C) {                                                            \
                case 1: for (; ox + PXB <= k->ix1; ox += PXB) dense_16_##PXB##_1(k, rr, ox, b, dst); break; \
                case 2: for (; ox + PXB <= k->ix1; ox += PXB) dense_16_##PXB##_2(k, rr, ox, b, dst); break; \
                case 3: for (; ox + PXB <= k->ix1; ox += PXB) dense_16_##PXB##_3(k, rr, ox, b, dst); break; \
                case 4: for (; ox + PXB <= k->ix1; ox += PXB) dense_16_##PXB##_4(k, rr, ox, b, dst); break; \
                case 6: for (; ox + PXB <= k->ix1; ox += PXB) dense_16_##PXB##_6(k, rr, ox, b, dst); break; \
                case 8: for (; ox + PXB <= k->ix1; ox += PXB) dense_16_##PXB##_8(k, rr, ox, b, dst); break; \
                default: for (; ox + PXB <= k->ix1; ox += PXB) dense_16_##PXB##_0(k, rr, ox, b, dst); \
                }                                                                                  \
                for (; ox < k->ow; ox++) dense_edge_16(k, rr, ox, b, dst);                         \
            }                                                                                      \
        } else {                                                                                   \
            for (int b = 0; b < k->nb; b++)                                                        \
                for (int ox = 0; ox < k->ow; ox++) gather_px(k, rr, ox, b, dst);                   \
        }                                                                                          \
        {                                                                                          \
            float *d0 = k->mode == MODE_EXPAND ? dst + (size_t)k->ox0 * k->nmaps : dst;             \
            const size_t n = (size_t)(k->mode == MODE_EXPAND ? k->ox1 - k->ox0 : k->ow) * k->nmaps;  \
            activate_row(k, d0, n);                                                                \
            if (!k->nonfinite) k->nonfinite = any_nonfinite(d0, n);                                \
        }                                                                                          \
        free(heap);                                                                                \
    }

/* Fold one finished conv row into the pooled row (valid pooling, stride = size). */
#define POOL_FOLD(SUFFIX, ATTR)                                                                    \
    ATTR static void pool_fold_##SUFFIX(const float *restrict row, float *restrict acc, int opw,   \
                                        int pw, int nmaps, int first, int is_max) {                \
        for (int q = 0; q < opw; q++) {                                                            \
            float *a = acc + (size_t)q * nmaps;                                                    \
            const float *s = row + (size_t)q * pw * nmaps;                                         \
            for (int t = 0; t < pw; t++) {                                                         \
                const float *v = s + (size_t)t * nmaps;                                            \
                if (first && t == 0) memcpy(a, v, sizeof(float) * (size_t)nmaps);                  \
                else if (is_max)                                                                   \
                    for (int m = 0; m < nmaps; m++) a[m] = v[m] > a[m] ? v[m] : a[m];              \
                else                                                                               \
                    for (int m = 0; m < nmaps; m++) a[m] += v[m];                                  \
            }                                                                                      \
        }                                                                                          \
    }

#define BANDS(SUFFIX, ATTR)                                                                        \
    ATTR static int bands_##SUFFIX(Conv *k, float *out, int r0, int r1, int pmode, int ph, int pw) { \
        if (!pmode && k->mode == MODE_EXPAND) {                                                    \
            /* Column tiles whose expanded rows stay in L1 while the band's rows pass over them. */ \
            for (int t0 = 0; t0 < k->ow; t0 += k->tile) {                                          \
                k->ox0 = t0;                                                                       \
                k->ox1 = t0 + k->tile < k->ow ? t0 + k->tile : k->ow;                              \
                k->bc0 = t0;                                                                       \
                k->bc1 = k->ox1 + MAX_EXPAND_VECTORS * 16 / k->vf + (k->kw - 1) * k->dw / k->sw + 1; \
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
        float *row = (float *)malloc(sizeof(float) * (size_t)k->ow * k->nmaps);                    \
        if (!row) return -1;                                                                       \
        const size_t prow = (size_t)opw * k->nmaps;                                                \
        const float count = (float)(ph * pw);                                                      \
        for (int py = r0; py < r1; py++) {                                                         \
            float *acc = out + (size_t)(py - r0) * prow;                                           \
            for (int t = 0; t < ph; t++) {                                                         \
                conv_row_##SUFFIX(k, py * ph + t, row);                                            \
                pool_fold_##SUFFIX(row, acc, opw, pw, k->nmaps, t == 0, pmode == POOL_MAX);        \
            }                                                                                      \
            if (pmode == POOL_AVG)                                                                 \
                for (size_t i = 0; i < prow; i++) acc[i] /= count;                                 \
        }                                                                                          \
        free(row);                                                                                 \
        return 0;                                                                                  \
    }

CONV_ROW(base, , 3, 2)
POOL_FOLD(base, )
BANDS(base, )
#if MULTI_ISA
CONV_ROW(avx2, TARGET("arch=x86-64-v3"), 6, 4)
POOL_FOLD(avx2, TARGET("arch=x86-64-v3"))
BANDS(avx2, TARGET("arch=x86-64-v3"))
CONV_ROW(avx512, TARGET("arch=x86-64-v4"), 8, 8)
POOL_FOLD(avx512, TARGET("arch=x86-64-v4"))
BANDS(avx512, TARGET("arch=x86-64-v4"))
#endif

typedef int (*bands_fn)(Conv *, float *, int, int, int, int, int);
static bands_fn bands = bands_base;
static const char *isa_name = "baseline";

static void pick_isa(void) {
#if MULTI_ISA
    __builtin_cpu_init();
    const char *force = getenv("CONVCLI_CCORE_ISA");
    int want = force && !strcmp(force, "baseline") ? 0 : force && !strcmp(force, "avx2") ? 1 : 2;
    if (want >= 2 && __builtin_cpu_supports("x86-64-v4")) {
        bands = bands_avx512;
        isa_name = "avx512";
    } else if (want >= 1 && __builtin_cpu_supports("x86-64-v3")) {
        bands = bands_avx2;
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
    "rows(x, w, bias, out, rowmap, colmap, geom, act, slope, r0, r1, pool)\n\n"
    "Output rows [r0, r1) of one layer into out (C-contiguous float32). geom is the int tuple\n"
    "(H, W, C, kh, kw, sh, sw, dh, dw, ow, nmaps, vf, depthwise, mult, left, mode); pool is\n"
    "(mode, ph, pw) with mode 0 none, 1 max, 2 avg (valid, stride = size; r0, r1 are then\n"
    "pooled rows). Arguments are checked by convcli.engine.ccore; the GIL is released.\n"
    "Returns whether a finished value is Inf or NaN (float32 overflow).";

static PyObject *py_rows(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *ox, *ow_, *ob, *oo, *orm, *ocm;
    Conv k;
    int act, r0, r1, pmode, ph, pw;
    float slope;
    memset(&k, 0, sizeof k);
    if (!PyArg_ParseTuple(args, "OOOOOO(iiiiiiiiiiiiiiii)ifii(iii)", &ox, &ow_, &ob, &oo, &orm, &ocm, &k.H, &k.W,
                          &k.C, &k.kh, &k.kw, &k.sh, &k.sw, &k.dh, &k.dw, &k.ow, &k.nmaps, &k.vf, &k.depthwise,
                          &k.mult, &k.left, &k.mode, &act, &slope, &r0, &r1, &pmode, &ph, &pw))
        return NULL;
    if (k.H < 1 || k.W < 1 || k.C < 1 || k.kh < 1 || k.kw < 1 || k.sh < 1 || k.sw < 1 || k.dh < 1 || k.dw < 1 ||
        k.ow < 1 || k.nmaps < 1 || k.mult < 1 || r0 < 0 || r1 < r0 || k.left < 0 || pmode < 0 || pmode > 2 ||
        (pmode && (ph < 1 || pw < 1 || pw > k.ow)) || k.mode < 0 || k.mode > 2 || act < 0 || act > 5 ||
        (k.depthwise && k.nmaps != k.C * k.mult) || (!k.depthwise && k.mode == MODE_GATHER)) {
        PyErr_SetString(PyExc_ValueError, "_ccore.rows: bad geometry");
        return NULL;
    }
    if (k.mode == MODE_EXPAND && k.kw > 64) {
        PyErr_SetString(PyExc_ValueError, "_ccore.rows: the expand kernel takes at most 64 kernel columns");
        return NULL;
    }
    if (k.mode == MODE_EXPAND ? (k.vf != 1 && k.vf != 2 && k.vf != 4 && k.vf != 8 && k.vf != 16) ||
                                    (k.vf < 16 && k.nmaps > k.vf) || (!k.depthwise && k.vf == 16)
                              : k.vf != 16) {
        PyErr_SetString(PyExc_ValueError, "_ccore.rows: bad lane count");
        return NULL;
    }
    k.act = act;
    k.slope = slope;
    k.nb = (k.nmaps + k.vf - 1) / k.vf;
    Py_ssize_t wsize;
    if (k.mode == MODE_EXPAND)
        wsize = (Py_ssize_t)k.nb * k.kh * k.kw * (k.depthwise ? 1 : k.C) * 16;
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
    if (!bad && k.mode == MODE_EXPAND) {
        k.nplanes = k.depthwise ? k.nb : k.C;
        k.ncol = k.ow + MAX_EXPAND_PIXELS + (k.kw - 1) * k.dw / k.sw + 1;
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
        k.ring = (float *)malloc(sizeof(float) * k.rowsize * (size_t)k.nslots);
        k.tags = (int *)malloc(sizeof(int) * (size_t)k.nslots);
        if (!k.ring || !k.tags) nomem = 1;
        else
            for (int i = 0; i < k.nslots; i++) k.tags[i] = -1;
    }
    if (!bad && !nomem) {
        Py_BEGIN_ALLOW_THREADS
        nomem = bands(&k, out, r0, r1, pmode, ph, pw) < 0;
        Py_END_ALLOW_THREADS
    }
    free(k.ring);
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

static PyMethodDef methods[] = {
    {"rows", py_rows, METH_VARARGS, rows_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_ccore",
    "convcli's compiled direct-convolution core (see convcli.engine.ccore).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__ccore(void) {
    pick_isa();
    PyObject *m = PyModule_Create(&module);
    if (m && PyModule_AddStringConstant(m, "ISA", isa_name) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
