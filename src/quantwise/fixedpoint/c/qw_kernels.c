/* quantwise integer-only kernels (see qw_kernels.h). Bit-identical to quantwise's NumPy
 * integer executor: same accumulation order (bias, then input channel, kernel row, kernel
 * column), same rounding rule (half to even on the exact 64-bit product). */
#include "qw_kernels.h"

#define QW_ACC_MAX ((int64_t)(((int64_t)1 << (QW_ACC_BITS - 1)) - 1))
#define QW_ACC_MIN (-((int64_t)1 << (QW_ACC_BITS - 1)))

/* round_half_even(p / 2^r) for r >= 1, without relying on >> of negative numbers */
int64_t qw_rshift_rne(int64_t p, int r) {
    const int64_t one = (int64_t)1 << r;
    const int64_t half = one >> 1;
    int64_t q, rem;
    if (p >= 0) {
        q = p >> r;
    } else {
        q = -((-p + one - 1) >> r);
    }
    rem = p - q * one; /* 0 <= rem < one */
    if (rem > half || (rem == half && (q & 1) != 0)) {
        q += 1;
    }
    return q;
}

int32_t qw_load(qw_tensor_t t, int i) {
    switch (t.type) {
    case QW_I8: return ((const int8_t *)t.data)[i];
    case QW_U8: return ((const uint8_t *)t.data)[i];
    case QW_I16: return ((const int16_t *)t.data)[i];
    default: return ((const uint16_t *)t.data)[i];
    }
}

/* v is already within the tensor's range (every kernel clips before storing) */
void qw_store(qw_tensor_t t, int i, int32_t v) {
    switch (t.type) {
    case QW_I8: ((int8_t *)t.data)[i] = (int8_t)v; break;
    case QW_U8: ((uint8_t *)t.data)[i] = (uint8_t)v; break;
    case QW_I16: ((int16_t *)t.data)[i] = (int16_t)v; break;
    default: ((uint16_t *)t.data)[i] = (uint16_t)v; break;
    }
}

static int32_t qw_clamp(int64_t v, int32_t lo, int32_t hi) {
    return v < lo ? lo : (v > hi ? hi : (int32_t)v);
}

static int64_t qw_acc_add(int64_t acc, int64_t prod, int saturate) {
    int64_t s = acc + prod;
    if (saturate) {
        if (s > QW_ACC_MAX) s = QW_ACC_MAX;
        if (s < QW_ACC_MIN) s = QW_ACC_MIN;
    }
    return s;
}

static int32_t qw_requant(int64_t acc, int32_t mult, int shift, int32_t lo, int32_t hi) {
    return qw_clamp(qw_rshift_rne(acc * (int64_t)mult, shift), lo, hi);
}

void qw_conv2d(const qw_conv_t *c, qw_tensor_t x, const qw_weight_t *w, const int32_t *bias,
               const int32_t *mult, const uint8_t *shift, qw_tensor_t y) {
    const int cin_g = c->in_c / c->groups, cout_g = c->out_c / c->groups;
    int n, oy, ox, ci, ky, kx;
    for (n = 0; n < c->out_c; ++n) {
        const int c0 = (n / cout_g) * cin_g; /* first input channel of this output's group */
        for (oy = 0; oy < c->out_h; ++oy) {
            for (ox = 0; ox < c->out_w; ++ox) {
                int64_t acc = bias[n];
                for (ci = 0; ci < cin_g; ++ci) {
                    for (ky = 0; ky < c->k_h; ++ky) {
                        const int iy = oy * c->stride_h - c->pad_h + ky;
                        for (kx = 0; kx < c->k_w; ++kx) {
                            const int ix = ox * c->stride_w - c->pad_w + kx;
                            if (iy >= 0 && iy < c->in_h && ix >= 0 && ix < c->in_w) {
                                const int64_t xv = qw_load(x, ((c0 + ci) * c->in_h + iy) * c->in_w + ix);
                                const int64_t wv = w[((n * cin_g + ci) * c->k_h + ky) * c->k_w + kx];
                                acc = qw_acc_add(acc, xv * wv, c->saturate);
                            }
                        }
                    }
                }
                qw_store(y, (n * c->out_h + oy) * c->out_w + ox, qw_requant(acc, mult[n], shift[n], c->clip_lo, c->clip_hi));
            }
        }
    }
}

void qw_linear(int in_f, int out_f, int saturate, int32_t clip_lo, int32_t clip_hi, qw_tensor_t x,
               const qw_weight_t *w, const int32_t *bias, const int32_t *mult, const uint8_t *shift, qw_tensor_t y) {
    int n, k;
    for (n = 0; n < out_f; ++n) {
        int64_t acc = bias[n];
        for (k = 0; k < in_f; ++k) {
            acc = qw_acc_add(acc, (int64_t)qw_load(x, k) * (int64_t)w[n * in_f + k], saturate);
        }
        qw_store(y, n, qw_requant(acc, mult[n], shift[n], clip_lo, clip_hi));
    }
}

void qw_clip(int n, int32_t lo, int32_t hi, qw_tensor_t x, qw_tensor_t y) {
    int i;
    for (i = 0; i < n; ++i) qw_store(y, i, qw_clamp(qw_load(x, i), lo, hi));
}

void qw_maxpool(int c, int h, int w, int k_h, int k_w, int s_h, int s_w, int p_h, int p_w,
                int out_h, int out_w, qw_tensor_t x, qw_tensor_t y) {
    int ci, oy, ox, ky, kx;
    for (ci = 0; ci < c; ++ci) {
        for (oy = 0; oy < out_h; ++oy) {
            for (ox = 0; ox < out_w; ++ox) {
                int32_t m = INT32_MIN;
                for (ky = 0; ky < k_h; ++ky) {
                    for (kx = 0; kx < k_w; ++kx) {
                        const int iy = oy * s_h - p_h + ky, ix = ox * s_w - p_w + kx;
                        if (iy >= 0 && iy < h && ix >= 0 && ix < w && qw_load(x, (ci * h + iy) * w + ix) > m) {
                            m = qw_load(x, (ci * h + iy) * w + ix);
                        }
                    }
                }
                qw_store(y, (ci * out_h + oy) * out_w + ox, m);
            }
        }
    }
}

/* Zeros around each channel (the zero point is 0): x (c, h, w) at (top, left) inside y (c, out_h, out_w). */
void qw_pad(int c, int h, int w, int top, int left, int out_h, int out_w, qw_tensor_t x, qw_tensor_t y) {
    int ci, oy, ox;
    for (ci = 0; ci < c; ++ci) {
        for (oy = 0; oy < out_h; ++oy) {
            for (ox = 0; ox < out_w; ++ox) {
                const int iy = oy - top, ix = ox - left;
                const int inside = iy >= 0 && iy < h && ix >= 0 && ix < w;
                qw_store(y, (ci * out_h + oy) * out_w + ox, inside ? qw_load(x, (ci * h + iy) * w + ix) : 0);
            }
        }
    }
}

void qw_avgpool(int c, int h, int w, int k_h, int k_w, int s_h, int s_w, int out_h, int out_w,
                int32_t mult, int shift, qw_tensor_t x, qw_tensor_t y) {
    int ci, oy, ox, ky, kx;
    for (ci = 0; ci < c; ++ci) {
        for (oy = 0; oy < out_h; ++oy) {
            for (ox = 0; ox < out_w; ++ox) {
                int64_t s = 0;
                for (ky = 0; ky < k_h; ++ky) {
                    for (kx = 0; kx < k_w; ++kx) {
                        s += qw_load(x, (ci * h + oy * s_h + ky) * w + ox * s_w + kx);
                    }
                }
                qw_store(y, (ci * out_h + oy) * out_w + ox, (int32_t)qw_rshift_rne(s * (int64_t)mult, shift));
            }
        }
    }
}

void qw_add(int n, qw_tensor_t a, int32_t mult_a, int shift_a, qw_tensor_t b, int32_t mult_b, int shift_b,
            int32_t clip_lo, int32_t clip_hi, qw_tensor_t y) {
    int i;
    for (i = 0; i < n; ++i) {
        const int64_t v = qw_rshift_rne((int64_t)qw_load(a, i) * mult_a, shift_a) + qw_rshift_rne((int64_t)qw_load(b, i) * mult_b, shift_b);
        qw_store(y, i, qw_clamp(v, clip_lo, clip_hi));
    }
}
