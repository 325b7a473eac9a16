/* fp8.h: FP8 E4M3 ("e4m3fn": 1 sign, 4 exponent bits of bias 7, 3 mantissa
 * bits, no infinities, 0x7F / 0xFF NaN, largest finite 448, smallest subnormal
 * 2^-9) on the host: the reference the fp8 KV cache (kernels.h KV_DTYPE_FP8)
 * is held to. The CPU backend stores exactly these bytes; the CUDA backend
 * converts with cuda_fp8.h's __nv_cvt_float_to_fp8(x, __NV_SATFINITE,
 * __NV_E4M3), whose results these functions reproduce bit for bit (round to
 * nearest even; |x| > 448 and +-inf saturate to +-448; NaN of either sign
 * gives 0x7F), so a test on the CPU exercises the GPU's rounding.
 *
 * KV rows are quantised with one fp32 scale per (token, KV head) row:
 * scale = max|x| / 448, byte i = e4m3(x[i] / scale), x[i] ~ e4m3(byte) * scale. */
#ifndef GLMTP_FP8_H
#define GLMTP_FP8_H

#include <stdint.h>

#define FP8_E4M3_MAX 448.0f

#ifdef __cplusplus
extern "C" {
#endif

/* x rounded to the nearest e4m3 (ties to even), saturating; see above. */
uint8_t fp8_e4m3_from_float(float x);
/* The value of an e4m3 byte (NaN for 0x7F and 0xFF). */
float fp8_e4m3_to_float(uint8_t b);
/* lut[b] = fp8_e4m3_to_float(b) for all 256 bytes. */
void fp8_e4m3_table(float lut[256]);
/* One KV row of n values: *scale = max|x[i]| / 448 (NaN elements ignored),
 * q[i] = e4m3(x[i] / scale), or e4m3(x[i]) when the scale is 0 (an all-zero
 * row stays zero). */
void fp8_quantise_row(uint8_t *q /* OUT [n] */, float *scale /* OUT */, const float *x, int n);

#ifdef __cplusplus
}
#endif

#endif
