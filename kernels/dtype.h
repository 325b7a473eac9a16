/* Element types of weights and tensors, and scalar conversions to fp32.
 * bf16 -> fp32 is exact (the bf16 bits are the top half of the fp32 bits). */
#ifndef GLMTP_DTYPE_H
#define GLMTP_DTYPE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef enum { KDT_F32 = 0, KDT_BF16 = 1, KDT_F16 = 2 } kdtype;

static inline size_t kdtype_size(kdtype t) { return t == KDT_F32 ? 4 : 2; }
static inline const char *kdtype_name(kdtype t) {
    return t == KDT_F32 ? "F32" : t == KDT_BF16 ? "BF16" : "F16";
}

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Round to nearest even; NaN stays NaN. */
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: renormalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400u)) { man <<= 1; exp--; }
            u = sign | (exp << 23) | ((man & 0x3ffu) << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

#endif
