/* quantwise integer-only kernels: C99, no floating point, no heap.
 *
 * Activations are int32_t arrays in NCHW order (batch of one) holding the values of their
 * fixed-point format (zero point 0); weights are qw_weight_t (int8_t or int16_t, from
 * qw_config.h). Rescaling: y = round_half_even(acc * multiplier / 2^shift), then clip.
 */
#ifndef QW_KERNELS_H
#define QW_KERNELS_H

#include <stdint.h>
#include "qw_config.h"

typedef struct {
    int in_c, in_h, in_w, out_c, out_h, out_w;
    int k_h, k_w, stride_h, stride_w, pad_h, pad_w;
    int32_t clip_lo, clip_hi;
    int saturate; /* 1: accumulate one product at a time, saturating at QW_ACC_BITS */
} qw_conv_t;

int64_t qw_rshift_rne(int64_t p, int r);
void qw_conv2d(const qw_conv_t *c, const int32_t *x, const qw_weight_t *w, const int32_t *bias,
               const int32_t *mult, const uint8_t *shift, int32_t *y);
void qw_linear(int in_f, int out_f, int saturate, int32_t clip_lo, int32_t clip_hi, const int32_t *x,
               const qw_weight_t *w, const int32_t *bias, const int32_t *mult, const uint8_t *shift, int32_t *y);
void qw_clip(int n, int32_t lo, int32_t hi, const int32_t *x, int32_t *y);
void qw_maxpool(int c, int h, int w, int k_h, int k_w, int s_h, int s_w, int p_h, int p_w,
                int out_h, int out_w, const int32_t *x, int32_t *y);
void qw_avgpool(int c, int h, int w, int k_h, int k_w, int s_h, int s_w, int out_h, int out_w,
                int32_t mult, int shift, const int32_t *x, int32_t *y);
void qw_add(int n, const int32_t *a, int32_t mult_a, int shift_a, const int32_t *b, int32_t mult_b, int shift_b,
            int32_t clip_lo, int32_t clip_hi, int32_t *y);

#endif
