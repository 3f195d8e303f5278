/* One time scale of the transformer branch completed by the newest step (hmarl/encoders/inference.py,
 * scale_complete): the same arithmetic as its torch path, one pass per window instead of ~40 small ops.
 *
 * Per window (OpenMP over windows, on torch's own thread team as in hmarl/agents/int8_heads.c):
 *   old query i < m gains the newest key:   a_i = a_old_i + sigmoid(s_i - lse_i) * (v_new - a_old_i)   per head
 *   the newest query attends to every key:  a_m = softmax_j(s_j) . [v_old ; v_new]                      per head
 *   every step:  y_i = a_i Wo^T + bo + z_i,   g_i = GELU(LayerNorm2(y_i) W1^T + b1)
 *   out = [y_m + g_m W2^T + b2,  mean_i y_i + (mean_i g_i) W2^T + b2]   (the layer output's last step and its
 *   mean over steps: the feed-forward output projection is linear, so it is applied to the two summaries)
 * Shapes: q, k, v, a, z (N, m, d); lse (N, m, H); qkvn (N, 3 d): the newest step's query, key, value;
 * zn (N, d); woT (d, d), w1T (d, ff) and w2T (ff, d) are the weights transposed (input-major: each output row
 * is a sum of scaled weight rows); out (N, 2, d). d = H * dh, s = (q . k) / sqrt(dh).
 *
 * Speed: the branch's usual widths (d 16/32/64, 4 heads, ff = 2 d) are compiled with constant sizes, so the
 * rows stay in vector registers; exp and erf are polynomials the compiler vectorizes (libm's are a call per
 * element; the GELU's erf: Abramowitz-Stegun 7.1.26, |error| < 1.5e-7). Other widths run the same code with
 * run-time sizes. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define MAXD 512 /* d and ff bounds of the on-stack rows (the Python side checks them) */
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

typedef float v16 __attribute__((vector_size(64))); /* GCC lowers it to the target's vector width */

static inline v16 load16(const float *p) {
  v16 r;
  memcpy(&r, p, sizeof r);
  return r;
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

static inline __attribute__((always_inline)) void step_out(
    const float *a, const float *z, const float *woT, const float *bo, const float *g2, const float *b2,
    float eps, const float *w1T, const float *b1, float *y, float *g, int64_t d, int64_t ff) {
  float ln[MAXD];
  affine(a, woT, bo, y, d, d);
  for (int64_t e = 0; e < d; e++) y[e] += z[e];
  const float mean = sum(y, d) / (float)d;
  for (int64_t e = 0; e < d; e++) ln[e] = (y[e] - mean) * (y[e] - mean);
  const float rstd = 1.0f / sqrtf(sum(ln, d) / (float)d + eps);
  for (int64_t e = 0; e < d; e++) ln[e] = (y[e] - mean) * rstd * g2[e] + b2[e];
  affine(ln, w1T, b1, g, d, ff);
  for (int64_t j = 0; j < ff; j++) g[j] = gelu(g[j]);
}

static inline __attribute__((always_inline)) void window(
    int64_t n, const float *q, const float *k, const float *v, const float *a, const float *z,
    const float *lse, const float *qkvn, const float *zn, const float *woT, const float *bo, const float *g2,
    const float *b2, float eps, const float *w1T, const float *b1, const float *w2T, const float *bf,
    float *ys, int64_t m, int64_t d, int64_t H, int64_t ff, float sdh) {
  const int64_t dh = d / H, steps = m + 1;
  const float *qo = q + n * m * d, *ko = k + n * m * d, *vo = v + n * m * d, *ao = a + n * m * d;
  const float *zo = z + n * m * d, *ls = lse + n * m * H;
  const float *qw = qkvn + n * 3 * d, *kw = qw + d, *vw = qw + 2 * d, *zw = zn + n * d;
  float *out = ys + n * 2 * d;
  float ai[MAXD], y[MAXD], ysum[MAXD], g[MAXD], gsum[MAXD], s[MAXS], p[MAXS];
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
    step_out(ai, zo + i * d, woT, bo, g2, b2, eps, w1T, b1, y, g, d, ff);
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
  step_out(ai, zw, woT, bo, g2, b2, eps, w1T, b1, y, g, d, ff);
  for (int64_t j = 0; j < ff; j++) gsum[j] = (gsum[j] + g[j]) / (float)steps;
  float f_last[MAXD], f_mean[MAXD];
  affine(g, w2T, bf, f_last, ff, d);
  affine(gsum, w2T, bf, f_mean, ff, d);
  for (int64_t e = 0; e < d; e++) {
    out[e] = y[e] + f_last[e];
    out[d + e] = (ysum[e] + y[e]) / (float)steps + f_mean[e];
  }
}

#define ARGS q, k, v, a, z, lse, qkvn, zn, woT, bo, g2, b2, eps, w1T, b1, w2T, bf, ys, m
#define FIXED(D, HEADS)                                                                    \
  if (d == (D) && H == (HEADS) && ff == 2 * (D)) {                                         \
    _Pragma("omp parallel for schedule(static)") for (int64_t n = 0; n < N; n++)           \
        window(n, ARGS, (D), (HEADS), 2 * (D), sdh);                                       \
    return;                                                                                \
  }

void hm_attention_complete(const float *q, const float *k, const float *v, const float *a, const float *z,
                           const float *lse, const float *qkvn, const float *zn, const float *woT,
                           const float *bo, const float *g2, const float *b2, float eps, const float *w1T,
                           const float *b1, const float *w2T, const float *bf, float *ys, int64_t N, int64_t m,
                           int64_t d,
                           int64_t H, int64_t ff, float sdh) {
  FIXED(32, 4)
  FIXED(64, 4)
  FIXED(16, 4)
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; n++) window(n, ARGS, d, H, ff, sdh);
}
