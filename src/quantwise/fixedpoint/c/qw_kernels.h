/* quantwise integer-only kernels: C99, no floating point, no heap.
 *
 * An activation is a qw_tensor_t: its bytes in the model's arena and its integer type, the
 * width of its fixed-point format (int8/uint8/int16/uint16, zero point 0), in NCHW order for
 * a batch of one. Weights are qw_weight_t (int8_t or int16_t, from qw_config.h).
 * Rescaling: y = round_half_even(acc * multiplier / 2^shift), then clip.
 */
#ifndef QW_KERNELS_H
#define QW_KERNELS_H

#include <stdint.h>
#include "qw_config.h"

typedef enum { QW_I8 = 0, QW_U8 = 1, QW_I16 = 2, QW_U16 = 3 } qw_type_t;

typedef struct {
    void *data;
    qw_type_t type;
} qw_tensor_t;

typedef struct {
    int in_c, in_h, in_w, out_c, out_h, out_w;
    int k_h, k_w, stride_h, stride_w, pad_h, pad_w;
    int groups; /* 1: dense; in_c: depthwise. Weights are (out_c, in_c / groups, k_h, k_w) */
    int32_t clip_lo, clip_hi;
    int saturate; /* 1: accumulate one product at a time, saturating at QW_ACC_BITS */
} qw_conv_t;

int32_t qw_load(qw_tensor_t t, int i);
void qw_store(qw_tensor_t t, int i, int32_t v);
int64_t qw_rshift_rne(int64_t p, int r);
void qw_conv2d(const qw_conv_t *c, qw_tensor_t x, const qw_weight_t *w, const int32_t *bias,
               const int32_t *mult, const uint8_t *shift, qw_tensor_t y);
void qw_linear(int in_f, int out_f, int saturate, int32_t clip_lo, int32_t clip_hi, qw_tensor_t x,
               const qw_weight_t *w, const int32_t *bias, const int32_t *mult, const uint8_t *shift, qw_tensor_t y);
void qw_clip(int n, int32_t lo, int32_t hi, qw_tensor_t x, qw_tensor_t y);
void qw_maxpool(int c, int h, int w, int k_h, int k_w, int s_h, int s_w, int p_h, int p_w,
                int out_h, int out_w, qw_tensor_t x, qw_tensor_t y);
void qw_avgpool(int c, int h, int w, int k_h, int k_w, int s_h, int s_w, int out_h, int out_w,
                int32_t mult, int shift, qw_tensor_t x, qw_tensor_t y);
void qw_pad(int c, int h, int w, int top, int left, int out_h, int out_w, qw_tensor_t x, qw_tensor_t y);
void qw_add(int n, qw_tensor_t a, int32_t mult_a, int shift_a, qw_tensor_t b, int32_t mult_b, int shift_b,
            int32_t clip_lo, int32_t clip_hi, qw_tensor_t y);

#endif
