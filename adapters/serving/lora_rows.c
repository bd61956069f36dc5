/* rolora: every row's LoRA of a mixed decoding step added in one call per layer (see lora_rows.py).
 *
 * For each group g of rows (G->order[start[g] .. start[g+1]) : rows of one adapter, whose rank columns in the
 * layer's stacks are [lo[g], lo[g] + r[g]), r[g] a multiple of 8):
 *     out[t, :] += (x[t, :] @ a_t[:, lo:lo+r]) @ b_t[lo:lo+r, :]
 * a_t [in, R] and b_t [R, out_w] row-major contiguous (B already times the adapter's scaling); x and out have rows
 * `x_stride` and `out_stride` floats apart (out: a view of a wider product's columns). Rows are taken four at a time,
 * so each 8-wide slice of A or B read from memory serves four rows. GCC/Clang vector extensions: built with
 * -march=native, they become the machine's own SIMD instructions. */
#include <stdint.h>
#include <string.h>

typedef float v8 __attribute__((vector_size(32)));
static inline v8 ld(const float *p) { v8 v; memcpy(&v, p, sizeof v); return v; }
static inline void st(float *p, v8 v) { memcpy(p, &v, sizeof v); }

#define MAX_RANK 256

typedef struct {
    const float *a_t;
    const float *b_t;
    int64_t in;
    int64_t rank; /* R: the stacked ranks of every adapter of the set */
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
    const int64_t in = L->in, R = L->rank, W = L->out_w, groups = G->count;
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
            for (int64_t j0 = 0; j0 < rk; j0 += 8) { /* h = x @ A: two partial sums per row, added at the end */
                v8 p0 = {0}, p1 = {0}, p2 = {0}, p3 = {0}, q0 = {0}, q1 = {0}, q2 = {0}, q3 = {0};
                const float *a = L->a_t + l0 + j0;
                int64_t i = 0;
                for (; i + 1 < in; i += 2) {
                    v8 av = ld(a + i * R), aw = ld(a + (i + 1) * R);
                    p0 += xr[0][i] * av; p1 += xr[1][i] * av; p2 += xr[2][i] * av; p3 += xr[3][i] * av;
                    q0 += xr[0][i + 1] * aw; q1 += xr[1][i + 1] * aw; q2 += xr[2][i + 1] * aw; q3 += xr[3][i + 1] * aw;
                }
                for (; i < in; i++) {
                    v8 av = ld(a + i * R);
                    p0 += xr[0][i] * av; p1 += xr[1][i] * av; p2 += xr[2][i] * av; p3 += xr[3][i] * av;
                }
                st(&h[0][j0], p0 + q0); st(&h[1][j0], p1 + q1); st(&h[2][j0], p2 + q2); st(&h[3][j0], p3 + q3);
            }
            const float *b = L->b_t + l0 * W;
            int64_t c = 0;
            for (; c + 8 <= W; c += 8) { /* out += h @ B, eight columns at a time */
                v8 o0 = ld(o[0] + c), o1 = ld(o[1] + c), o2 = ld(o[2] + c), o3 = ld(o[3] + c);
                for (int64_t j = 0; j < rk; j++) {
                    v8 bv = ld(b + j * W + c);
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
