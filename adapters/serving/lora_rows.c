/* rolora: every row's LoRA of a mixed decoding step added in one call per layer (see lora_rows.py).
 *
 * For each group g of rows (G->order[start[g] .. start[g+1]) : rows of one adapter, whose rank columns in the
 * layer's stacks are [lo[g], lo[g] + r[g]), r[g] a multiple of 8):
 *     out[t, :] += (x[t, :] @ a[lo:lo+r, :].T) @ b_t[lo:lo+r, :]
 * a [R, in] (the adapters' A matrices stacked, as PEFT holds them) and b_t [R, out_w] (B transposed, times the
 * adapter's scaling), row-major contiguous; x and out have rows `x_stride` and `out_stride` floats apart (out: a view
 * of a wider product's columns). Rows are taken four at a time, so each slice of A or B read from memory serves four
 * rows: x @ A as dot products of VW inputs a step (four rows by QB rank columns of partial sums), h @ B as VW output
 * columns a step. GCC/Clang vector extensions: built with -march=native, they become the machine's own SIMD
 * instructions (AVX-512: 16 floats; otherwise 8, and two rank columns a pass so the partial sums stay in registers). */
#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__)
#define VW 16
#define QB 4
#else
#define VW 8
#define QB 2
#endif
typedef float vf __attribute__((vector_size(VW * sizeof(float))));
static inline vf ld(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void st(float *p, vf v) { memcpy(p, &v, sizeof v); }
static inline float hsum(vf v)
{
    float s = 0;
    for (int l = 0; l < VW; l++) s += v[l];
    return s;
}

#define MAX_RANK 256

typedef struct {
    const float *a;   /* [R, in] */
    const float *b_t; /* [R, out_w] */
    int64_t in;
    int64_t out_w;
} lora_layer;

int lora_rows_max_rank(void) { return MAX_RANK; }

typedef struct {
    int64_t count;
    const int32_t *lo;
    const int32_t *r;
    const int32_t *start;
    const int32_t *order;
} lora_groups;

void lora_rows_add(const lora_layer *L, const lora_groups *G, const float *x, int64_t x_stride, float *out,
                   int64_t out_stride)
{
    const int64_t in = L->in, W = L->out_w, groups = G->count;
    const int32_t *lo = G->lo, *r = G->r, *start = G->start, *order = G->order;
    float h[4][MAX_RANK] __attribute__((aligned(32)));
    for (int64_t g = 0; g < groups; g++) {
        const int64_t l0 = lo[g], rk = r[g];
        for (int64_t s = start[g]; s < start[g + 1]; s += 4) {
            int nb = (int)(start[g + 1] - s);
            if (nb > 4) nb = 4;
            const float *xr[4];
            float *o[4];
            for (int k = 0; k < 4; k++) { /* fewer than four rows left: the first one again, not stored twice */
                int64_t t = order[s + (k < nb ? k : 0)];
                xr[k] = x + t * x_stride;
                o[k] = out + t * out_stride;
            }
            for (int64_t j0 = 0; j0 < rk; j0 += QB) { /* h = x @ A.T: QB rank columns of the four rows */
                vf acc[4][QB];
                const float *aq[QB];
                for (int q = 0; q < QB; q++) aq[q] = L->a + (l0 + j0 + q) * in;
                for (int k = 0; k < 4; k++)
                    for (int q = 0; q < QB; q++) acc[k][q] = (vf){0};
                int64_t i = 0;
                for (; i + VW <= in; i += VW) {
                    vf w[QB];
                    for (int q = 0; q < QB; q++) w[q] = ld(aq[q] + i);
                    for (int k = 0; k < 4; k++) {
                        vf xv = ld(xr[k] + i);
                        for (int q = 0; q < QB; q++) acc[k][q] += xv * w[q];
                    }
                }
                for (int k = 0; k < 4; k++)
                    for (int q = 0; q < QB; q++) {
                        float v = hsum(acc[k][q]);
                        for (int64_t t = i; t < in; t++) v += xr[k][t] * aq[q][t];
                        h[k][j0 + q] = v;
                    }
            }
            const float *b = L->b_t + l0 * W;
            int64_t c = 0;
            for (; c + VW <= W; c += VW) { /* out += h @ B, VW columns at a time */
                vf o0 = ld(o[0] + c), o1 = ld(o[1] + c), o2 = ld(o[2] + c), o3 = ld(o[3] + c);
                for (int64_t j = 0; j < rk; j++) {
                    vf bv = ld(b + j * W + c);
                    o0 += h[0][j] * bv; o1 += h[1][j] * bv; o2 += h[2][j] * bv; o3 += h[3][j] * bv;
                }
                st(o[0] + c, o0);
                if (nb > 1) st(o[1] + c, o1);
                if (nb > 2) st(o[2] + c, o2);
                if (nb > 3) st(o[3] + c, o3);
            }
            for (; c < W; c++)
                for (int k = 0; k < nb; k++) {
                    float v = o[k][c];
                    for (int64_t j = 0; j < rk; j++) v += h[k][j] * b[j * W + c];
                    o[k][c] = v;
                }
        }
    }
}
