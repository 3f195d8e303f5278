/* One time scale of the transformer branch completed by the newest step (hmarl/encoders/inference.py,
 * scale_complete): the same arithmetic as its torch path, one pass per window instead of ~40 small ops.
 *
 * Per window (OpenMP over windows, on torch's own thread team as in hmarl/agents/int8_heads.c):
 *   old query i < m gains the newest key:   a_i = a_old_i + sigmoid(s_i - lse_i) * (v_new - a_old_i)   per head
 *   the newest query attends to every key:  a_m = softmax_j(s_j) . [v_old ; v_new]                      per head
 *   every step:  y_i = a_i Wo^T + bo + z_i,   g_i = GELU(LayerNorm2(y_i) W1^T + b1)
 *   out = [y_m + g_m W2^T + b2,  mean_i y_i + (mean_i g_i) W2^T + b2]   (the layer output's last step and its
 *   mean over steps: the feed-forward output projection is linear, so it is applied to the two summaries)
 * The newest step itself: z_new = (partial + newest) / scale (partial: the sum of the older tokens of its
 * group, none at scale 1), its query, key and value from LayerNorm1(z_new) (in-projection).
 * Shapes: q, k, v, a, z (N, m, d); lse (N, m, H); newest, partial (N, d); out (N, 2, d); the weights in
 * HmLayer, matrices transposed (input-major: each output row is a sum of scaled weight rows).
 * d = H * dh, s = (q . k) / sqrt(dh).
 *
 * Speed: the branch's usual widths (d 16/32/64, 4 heads, ff = 2 d) are compiled with constant sizes, so the
 * rows stay in vector registers; exp and erf are polynomials the compiler vectorizes (libm's are a call per
 * element; the GELU's erf: Abramowitz-Stegun 7.1.26, |error| < 1.5e-7). Other widths run the same code with
 * run-time sizes. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define MAXD 512 /* bound of 3 d and ff, the on-stack rows (the Python side checks it) */
#define MAXS 1024 /* steps x heads bound of the on-stack scores (the Python side checks it) */

/* e^x for x in float range, ~1 ulp (Cephes-style: 2^n e^r, |r| <= ln2 / 2, degree-6 polynomial). */
static inline float exp_poly(float x) {
  x = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x); /* a ternary (not fminf) vectorizes */
  const float n = floorf(x * 1.44269504088896341f + 0.5f);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = ((int32_t)n + 127) << 23;
  float scale;
  memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

/* exact (erf) GELU: 0.5 x (1 + erf(x / sqrt 2)) */
static inline float gelu(float x) {
  const float u = fabsf(x) * 0.70710678118654752f;
  const float t = 1.0f / (1.0f + 0.3275911f * u);
  const float poly =
      t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
  const float erf_u = 1.0f - poly * exp_poly(-u * u);
  return 0.5f * x * (1.0f + copysignf(erf_u, x));
}

/* out = x W^T + b, with wT input-major (a sum of scaled weight rows: vectorized over the outputs) */
static inline __attribute__((always_inline)) void affine(const float *x, const float *wT, const float *b,
                                                         float *out, int64_t in, int64_t n_out) {
  float acc[MAXD];
  for (int64_t j = 0; j < n_out; j++) acc[j] = b[j];
  for (int64_t e = 0; e < in; e++) {
    const float xe = x[e];
    for (int64_t j = 0; j < n_out; j++) acc[j] += xe * wT[e * n_out + j];
  }
  for (int64_t j = 0; j < n_out; j++) out[j] = acc[j];
}

/* sum of x[0:n]: 16 partial sums (a plain loop is one add after another: the compiler may not reorder) */
static inline __attribute__((always_inline)) float sum(const float *x, int64_t n) {
  float part[16] = {0};
  int64_t e = 0;
  for (; e + 16 <= n; e += 16)
    for (int64_t l = 0; l < 16; l++) part[l] += x[e + l];
  float total = 0.0f;
  for (; e < n; e++) total += x[e];
  for (int64_t w = 8; w >= 1; w /= 2)
    for (int64_t l = 0; l < w; l++) part[l] += part[l + w];
  return total + part[0];
}

typedef struct { /* one encoder layer's weights (mirror: hmarl/encoders/inference.py HmLayer) */
  const float *g1, *bn1, *wiT, *bi; /* norm1; in-projection (d, 3 d), (3 d) */
  const float *woT, *bo;            /* output projection (d, d), (d) */
  const float *g2, *bn2;            /* norm2 */
  const float *w1T, *b1, *w2T, *b2; /* feed-forward (d, ff), (ff), (ff, d), (d) */
  int64_t d, H, ff;
  float eps1, eps2, sdh; /* sdh = 1 / sqrt(d / H) */
} HmLayer;

/* The struct's layout, compared field by field with its ctypes mirror at load (hmarl/cbuild.py check_layout):
   list every field here. */
typedef struct { const char *name; int64_t offset, size; } HmField;
#define F(f) {#f, (int64_t)offsetof(HmLayer, f), (int64_t)sizeof(((HmLayer *)0)->f)}
static const HmField HM_LAYER_FIELDS[] = {
  F(g1), F(bn1), F(wiT), F(bi), F(woT), F(bo), F(g2), F(bn2), F(w1T), F(b1), F(w2T), F(b2), F(d), F(H),
  F(ff), F(eps1), F(eps2), F(sdh)
};
#undef F
int64_t hm_layer_sizeof(void) { return (int64_t)sizeof(HmLayer); }
int64_t hm_layer_layout(const HmField **fields) {
  *fields = HM_LAYER_FIELDS;
  return (int64_t)(sizeof HM_LAYER_FIELDS / sizeof HM_LAYER_FIELDS[0]);
}

static inline __attribute__((always_inline)) void layer_norm(const float *x, const float *g, const float *b,
                                                             float eps, float *out, int64_t d) {
  float sq[MAXD];
  const float mean = sum(x, d) / (float)d;
  for (int64_t e = 0; e < d; e++) sq[e] = (x[e] - mean) * (x[e] - mean);
  const float rstd = 1.0f / sqrtf(sum(sq, d) / (float)d + eps);
  for (int64_t e = 0; e < d; e++) out[e] = (x[e] - mean) * rstd * g[e] + b[e];
}

/* y = a Wo^T + bo + z; g = GELU(LayerNorm2(y) W1^T + b1) */
static inline __attribute__((always_inline)) void step_out(const float *a, const float *z, const HmLayer *L,
                                                           float *y, float *g, int64_t d, int64_t ff) {
  float ln[MAXD];
  affine(a, L->woT, L->bo, y, d, d);
  for (int64_t e = 0; e < d; e++) y[e] += z[e];
  layer_norm(y, L->g2, L->bn2, L->eps2, ln, d);
  affine(ln, L->w1T, L->b1, g, d, ff);
  for (int64_t j = 0; j < ff; j++) g[j] = gelu(g[j]);
}

static inline __attribute__((always_inline)) void window(
    int64_t n, const HmLayer *L, const float *q, const float *k, const float *v, const float *a,
    const float *z, const float *lse, const float *newest, const float *partial, float scale, float *ys,
    int64_t m, int64_t d, int64_t H, int64_t ff) {
  const int64_t dh = d / H, steps = m + 1;
  const float sdh = L->sdh;
  const float *qo = q + n * m * d, *ko = k + n * m * d, *vo = v + n * m * d, *ao = a + n * m * d;
  const float *zo = z + n * m * d, *ls = lse + n * m * H;
  float *out = ys + n * 2 * d;
  float zw[MAXD], qkv[3 * MAXD], ai[MAXD], y[MAXD], ysum[MAXD], g[MAXD], gsum[MAXD], s[MAXS], p[MAXS];
  /* the newest step: pooled token, its query / key / value */
  for (int64_t e = 0; e < d; e++)
    zw[e] = partial ? (partial[n * d + e] + newest[n * d + e]) / scale : newest[n * d + e];
  layer_norm(zw, L->g1, L->bn1, L->eps1, ai, d);
  affine(ai, L->wiT, L->bi, qkv, d, 3 * d);
  const float *qw = qkv, *kw = qkv + d, *vw = qkv + 2 * d;
  /* old queries: their weight on the new key, sigmoid(s - lse), per (step, head) */
  for (int64_t i = 0; i < m * H; i++) {
    float dot = 0.0f;
    for (int64_t e = 0; e < dh; e++) dot += qo[i * dh + e] * kw[(i % H) * dh + e];
    s[i] = dot * sdh - ls[i];
  }
  for (int64_t i = 0; i < m * H; i++) s[i] = 1.0f / (1.0f + exp_poly(-s[i]));
  for (int64_t e = 0; e < d; e++) ysum[e] = 0.0f;
  for (int64_t j = 0; j < ff; j++) gsum[j] = 0.0f;
  for (int64_t i = 0; i < m; i++) {
    for (int64_t hd = 0; hd < H; hd++) {
      const float w = s[i * H + hd];
      for (int64_t e = hd * dh; e < (hd + 1) * dh; e++) ai[e] = ao[i * d + e] + w * (vw[e] - ao[i * d + e]);
    }
    step_out(ai, zo + i * d, L, y, g, d, ff);
    for (int64_t e = 0; e < d; e++) ysum[e] += y[e];
    for (int64_t j = 0; j < ff; j++) gsum[j] += g[j];
  }
  /* the newest query over every key: scores (step-major, head-minor), softmax per head */
  for (int64_t j = 0; j < steps; j++) {
    const float *kj = j < m ? ko + j * d : kw;
    for (int64_t hd = 0; hd < H; hd++) {
      float dot = 0.0f;
      for (int64_t e = 0; e < dh; e++) dot += kj[hd * dh + e] * qw[hd * dh + e];
      s[j * H + hd] = dot * sdh;
    }
  }
  float top[MAXD], total[MAXD];
  for (int64_t hd = 0; hd < H; hd++) top[hd] = s[hd], total[hd] = 0.0f;
  for (int64_t j = 1; j < steps; j++)
    for (int64_t hd = 0; hd < H; hd++) top[hd] = fmaxf(top[hd], s[j * H + hd]);
  for (int64_t i = 0; i < steps * H; i++) p[i] = exp_poly(s[i] - top[i % H]);
  for (int64_t j = 0; j < steps; j++)
    for (int64_t hd = 0; hd < H; hd++) total[hd] += p[j * H + hd];
  for (int64_t e = 0; e < d; e++) ai[e] = 0.0f;
  for (int64_t j = 0; j < steps; j++) {
    const float *vj = j < m ? vo + j * d : vw;
    for (int64_t hd = 0; hd < H; hd++)
      for (int64_t e = hd * dh; e < (hd + 1) * dh; e++) ai[e] += p[j * H + hd] * vj[e];
  }
  for (int64_t hd = 0; hd < H; hd++)
    for (int64_t e = hd * dh; e < (hd + 1) * dh; e++) ai[e] /= total[hd];
  step_out(ai, zw, L, y, g, d, ff);
  for (int64_t j = 0; j < ff; j++) gsum[j] = (gsum[j] + g[j]) / (float)steps;
  float f_last[MAXD], f_mean[MAXD];
  affine(g, L->w2T, L->b2, f_last, ff, d);
  affine(gsum, L->w2T, L->b2, f_mean, ff, d);
  for (int64_t e = 0; e < d; e++) {
    out[e] = y[e] + f_last[e];
    out[d + e] = (ysum[e] + y[e]) / (float)steps + f_mean[e];
  }
}

#define ARGS L, q, k, v, a, z, lse, newest, partial, scale, ys, m
#define FIXED(D, HEADS)                                                                    \
  if (L->d == (D) && L->H == (HEADS) && L->ff == 2 * (D)) {                                \
    _Pragma("omp parallel for schedule(static)") for (int64_t n = 0; n < N; n++)           \
        window(n, ARGS, (D), (HEADS), 2 * (D));                                            \
    return;                                                                                \
  }

void hm_attention_complete(const HmLayer *L, const float *q, const float *k, const float *v, const float *a,
                           const float *z, const float *lse, const float *newest, const float *partial,
                           float scale, float *ys, int64_t N, int64_t m) {
  FIXED(32, 4)
  FIXED(64, 4)
  FIXED(16, 4)
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; n++) window(n, ARGS, L->d, L->H, L->ff);
}
