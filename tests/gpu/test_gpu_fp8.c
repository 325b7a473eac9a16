/* test_gpu_kernels, part 5: the fp8 KV cache (kernels.h KV_DTYPE_FP8): e4m3
 * bytes [n_rows, d] then fp32 scales [n_rows] at a 16-byte aligned offset, one
 * row per (slot, KV head), on both backends.
 *
 * Stores. The GPU quantises bf16 inputs, the CPU fp32 ones: given the same
 * bf16-representable values both compute amax exactly (a max of |x|), scale =
 * amax / 448 and x / scale as correctly rounded fp32 divisions (nvcc's default
 * -prec-div=true and no -ftz, no fast math on either side), and round x / scale
 * to e4m3 the same way (kernels/fp8.c reproduces __nv_cvt_float_to_fp8(x,
 * __NV_SATFINITE, __NV_E4M3): nearest even, saturation, NaN -> 0x7F). So the
 * bytes and scales are expected bitwise equal, every slot of the buffers
 * (the ones no token writes keep their poison). The one exception is
 * rope_kv_store's K against the CPU's own RoPE: the GPU quantises the rotated
 * K after rounding it to bf16, the CPU its fp32 rotation; there the scales are
 * held to RoPE's tolerance over 448 and the bytes to one e4m3 step (the inputs
 * differ by < 2^-7 relative, far below an e4m3 step, >= 2^-4 relative, so one
 * rounding boundary at most), with the mismatches counted. Against the CPU's
 * kv_store fed the GPU's rotated (bf16) row it is bitwise again.
 *
 * Attention. The per-head kernel widens a row to fp32 (byte value * scale,
 * one fp32 product, as the CPU's table * scale): the same K/V as the CPU's fp8
 * attention, so the bf16 per-head tolerance applies. The grouped decode
 * kernel and both prefill variants round that product to bf16 for the tensor
 * cores: against the CPU over a cache of exactly those bf16 values (kv_dtype
 * 0) they get the bf16 kernels' tolerance (flash_tol); against the CPU's fp8
 * attention (fp32 K/V), fp8_tol adds the K and V roundings. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../kernels/fp8.h"
#include "gpu_check.h"

const char *kernels_cuda_attention_ran(kbackend kb); /* cuda_backend.cu's test hooks (test_gpu_attention.c) */
int kernels_cuda_flash_variant(kbackend kb, int set);

#define F8_POISON 0x7E     /* e4m3 448: with scale POISON/448 a row of 1000s nobody wrote */
#define F8_POISON_S (1000.0f / 448.0f)
#define F8_TAIL 64         /* sentinel bytes behind each GPU buffer */
#define F8_TAIL_BYTE 0xA5

/* One fp8 K or V buffer of n_rows rows of d: scale offset and size. */
static size_t f8_off(size_t n_rows, int d) { return (n_rows * (size_t)d + 15) & ~(size_t)15; }
static size_t f8_size(size_t n_rows, int d) { return f8_off(n_rows, d) + n_rows * 4; }

/* A host image of a poisoned buffer (+F8_TAIL sentinel bytes). */
static uint8_t *f8_poison(size_t n_rows, int d) {
    size_t off = f8_off(n_rows, d), n = f8_size(n_rows, d);
    uint8_t *h = xmalloc(n + F8_TAIL);
    memset(h, F8_POISON, n_rows * (size_t)d);
    for (size_t r = 0; r < n_rows; r++) {
        float s = F8_POISON_S;
        memcpy(h + off + 4 * r, &s, 4);
    }
    memset(h + n, F8_TAIL_BYTE, F8_TAIL);
    return h;
}

/* The image in backend B's memory. */
static void *f8_up(kbackend B, const uint8_t *img, size_t n_rows, int d) {
    size_t n = f8_size(n_rows, d) + F8_TAIL;
    void *p = B.iface->alloc(B.ctx, n);
    B.iface->to_device(B.ctx, p, img, n);
    return p;
}

/* Backend B's buffer as a host image; the tail's sentinels checked. */
static uint8_t *f8_down(kbackend B, const char *name, const void *p, size_t n_rows, int d) {
    size_t n = f8_size(n_rows, d);
    uint8_t *h = xmalloc(n + F8_TAIL);
    B.iface->to_host(B.ctx, h, p, n + F8_TAIL);
    int ok = 1;
    for (size_t i = n; i < n + F8_TAIL; i++) ok &= h[i] == F8_TAIL_BYTE;
    if (!ok) expect(0, "%s: wrote past the end of its fp8 buffer", name);
    return h;
}

static float f8_scale(const uint8_t *img, size_t n_rows, int d, size_t r) {
    float s;
    memcpy(&s, img + f8_off(n_rows, d) + 4 * r, 4);
    return s;
}

/* e4m3 bytes in value order: adjacent codes of one sign are adjacent values,
 * +0 and -0 both 0. */
static int f8_ord(uint8_t b) { return b & 0x80 ? -(int)(b & 0x7F) : (int)(b & 0x7F); }

/* Two images of n_rows rows of d. max_step 0 with s_atol = s_rtol = 0:
 * bitwise (scales compared as bits). Else bytes within max_step e4m3 steps
 * and scales within s_atol + s_rtol |want|; the differing bytes are counted. */
static void f8_compare(const char *name, const uint8_t *got, const uint8_t *want, size_t n_rows, int d, int max_step,
                       double s_atol, double s_rtol) {
    size_t nb = n_rows * (size_t)d, n_diff = 0, n_bad = 0, n_sbad = 0, first = (size_t)-1;
    int worst = 0;
    for (size_t i = 0; i < nb; i++) {
        if (got[i] == want[i]) continue;
        int step = abs(f8_ord(got[i]) - f8_ord(want[i]));
        if (step == 0 && max_step > 0) continue; /* -0 against +0 */
        n_diff++;
        if (step > worst) worst = step;
        /* bitwise: any difference; else more than max_step, or NaN (0x7F, 0xFF) against another byte */
        if (max_step == 0 || step > max_step || (got[i] & 0x7F) == 0x7F || (want[i] & 0x7F) == 0x7F) {
            if (first == (size_t)-1) first = i;
            n_bad++;
        }
    }
    double smax = 0.0;
    size_t sfirst = (size_t)-1;
    for (size_t r = 0; r < n_rows; r++) {
        float g = f8_scale(got, n_rows, d, r), w = f8_scale(want, n_rows, d, r);
        int ok = max_step == 0 && s_atol == 0.0 && s_rtol == 0.0 ? !memcmp(&g, &w, 4)
                                                                  : fabs((double)g - w) <= s_atol + s_rtol * fabs(w);
        double diff = fabs((double)g - w);
        if (diff > smax) smax = diff;
        if (!ok) {
            if (sfirst == (size_t)-1) sfirst = r;
            n_sbad++;
        }
    }
    int ok = !n_bad && !n_sbad;
    printf("%s  %-62s rows=%-6zu bytes differing %zu (max %d step), scales max_abs_diff %.3g", ok ? "PASS" : "FAIL",
           name, n_rows, n_diff, worst, smax);
    if (max_step == 0)
        printf(" (bitwise)\n");
    else
        printf(" (bytes <= %d step, scales atol=%.2g rtol=%.2g)\n", max_step, s_atol, s_rtol);
    if (n_bad)
        printf("      %zu bad bytes; first at row %zu [%zu]: gpu 0x%02x cpu 0x%02x\n", n_bad, first / (size_t)d,
               first % (size_t)d, got[first], want[first]);
    if (n_sbad)
        printf("      %zu bad scales; first at row %zu: gpu %.9g cpu %.9g\n", n_sbad, sfirst,
               (double)f8_scale(got, n_rows, d, sfirst), (double)f8_scale(want, n_rows, d, sfirst));
    tally(ok);
}

static kattn_batch f8_batch(int T, const int32_t *pos, const int32_t *seq, const int32_t *slots,
                            const int32_t *tables, int max_blocks, int bs, int max_pos, size_t n_rows, int d) {
    kattn_batch b = {T, pos, seq, slots, tables, max_blocks, bs, max_pos, NULL, NULL, 0,
                     KV_DTYPE_FP8, d, f8_off(n_rows, d)};
    return b;
}

static int f8_flash_disabled(void) {
    const char *e = getenv("GLMTP_NO_FLASH_PREFILL");
    return e && *e && strcmp(e, "0") != 0;
}

static int f8_env_variant(void) {
    const char *e = getenv("GLMTP_FLASH_VARIANT");
    return e && !strcmp(e, "1") ? 1 : 2;
}

/* ------------------------------------------------------------- kv_store */

/* Row r (of 2 T n_kv: K rows, then V rows) of d bf16 values, by kind r % 7:
 * 0 uniform in [-1.5, 1.5] (a KV row); 1 max |x| exactly 448 (scale 1, so
 * x / scale = x: bf16 values on e4m3 midpoints test ties to even); 2 a wide
 * range, 2^-24 .. 2^8 (subnormal e4m3 and values rounding to 0); 3 all zero
 * (scale 0: bytes e4m3(x) = 0); 4 values near 2^-120 (an fp32-subnormal
 * scale: no flush to zero on either side); 5 uniform with a +NaN and a -NaN
 * (ignored by the max, byte 0x7F); 6 magnitudes up to 2^127. */
static void f8_row(float *x, int d, int kind) {
    for (int i = 0; i < d; i++) {
        float u = 2.0f * (float)rng_uniform(&g_rng) - 1.0f, sg = u < 0 ? -1.0f : 1.0f;
        switch (kind) {
        case 0: x[i] = bfr(1.5f * u); break;
        case 1: x[i] = bfr(448.0f * u); break;
        case 2: x[i] = bfr(sg * ldexpf(1.0f + (float)rng_uniform(&g_rng), -24 + (int)(rng_next(&g_rng) % 33))); break;
        case 3: x[i] = 0.0f; break;
        case 4: x[i] = bfr(ldexpf(u, -120)); break;
        case 5: x[i] = bfr(u); break;
        default: x[i] = bfr(ldexpf(u, 127)); break;
        }
    }
    if (kind == 1) x[(int)(rng_next(&g_rng) % (uint64_t)d)] = rng_next(&g_rng) & 1 ? 448.0f : -448.0f;
    if (kind == 5) x[0] = NAN, x[d - 1] = -NAN;
}

/* kv_store of T tokens into distinct slots of poisoned fp8 caches, K and V
 * columns inside a wider row (ld), on both backends: bitwise equal images. */
static void test_fp8_kv_store_case(int T, int n_kv, int d) {
    int kvw = n_kv * d, ld = 2 * kvw + 3, n_slots = 2 * T + 5;
    size_t n_rows = (size_t)n_slots * n_kv;
    float *x = xmalloc((size_t)T * ld * 4);
    for (int t = 0; t < T; t++)
        for (int h = 0; h < 2 * n_kv; h++) f8_row(x + (size_t)t * ld + (size_t)h * d, d, (t * 2 * n_kv + h) % 7);
    int32_t *slots = xmalloc((size_t)T * 4), *pos = xmalloc((size_t)T * 4);
    /* distinct: n_slots = 2T + 5 is odd, so 2 and n_slots are coprime (5 was not, at T = 5) */
    for (int t = 0; t < T; t++) slots[t] = (2 * t + 3) % n_slots, pos[t] = t;
    uint8_t *img = f8_poison(n_rows, d);
    void *gk = f8_up(G, img, n_rows, d), *gv = f8_up(G, img, n_rows, d);
    void *ck = f8_up(C, img, n_rows, d), *cv = f8_up(C, img, n_rows, d);
    void *gx = g_act(x, (size_t)T * ld), *cx = c_act(x, (size_t)T * ld);
    void *gs = g_ints(slots, T), *cs = c_ints(slots, T), *gp = g_ints(pos, T), *cp = c_ints(pos, T);
    kattn_batch gb = f8_batch(T, gp, gp, gs, NULL, 0, 1, T - 1, n_rows, d);
    kattn_batch cb = f8_batch(T, cp, cp, cs, NULL, 0, 1, T - 1, n_rows, d);
    G.iface->kv_store(G.ctx, gk, gv, gx, (uint16_t *)gx + kvw, ld, kvw, &gb);
    C.iface->kv_store(C.ctx, ck, cv, cx, (float *)cx + kvw, ld, kvw, &cb);
    char name[128];
    snprintf(name, sizeof name, "kv_store fp8 T=%d n_kv=%d d=%d", T, n_kv, d);
    uint8_t *a = f8_down(G, name, gk, n_rows, d), *b = f8_down(C, name, ck, n_rows, d);
    char nm[160];
    snprintf(nm, sizeof nm, "%s: K (7 row kinds, rest untouched)", name);
    f8_compare(nm, a, b, n_rows, d, 0, 0.0, 0.0);
    free(a), free(b);
    a = f8_down(G, name, gv, n_rows, d), b = f8_down(C, name, cv, n_rows, d);
    snprintf(nm, sizeof nm, "%s: V", name);
    f8_compare(nm, a, b, n_rows, d, 0, 0.0, 0.0);
    free(a), free(b), free(img), free(x), free(slots), free(pos);
    void *g[] = {gk, gv, gx, gs, gp}, *c[] = {ck, cv, cx, cs, cp};
    for (int i = 0; i < 5; i++) G.iface->free(G.ctx, g[i]), C.iface->free(C.ctx, c[i]);
}

/* kv_dtype 0 ignores kv_head_dim and kv_scale_off: kv_store and attention
 * with them set to other values give the bf16 results bit for bit. */
static void test_bf16_guard(void) {
    int T = 40, n_kv = 2, q_per_kv = 4, d = 128, n_q = n_kv * q_per_kv, qw = n_q * d, kvw = n_kv * d;
    int ld = qw + 2 * kvw, bs = 16, max_blocks = 3;
    int32_t tables[3] = {2, 0, 1}, pos[40], seq[40], slots[40];
    for (int t = 0; t < T; t++) pos[t] = t, seq[t] = 0, slots[t] = tables[t / bs] * bs + t % bs;
    float *qkv = rand_bf16((size_t)T * ld, -1.5f, 1.5f);
    size_t cn = (size_t)max_blocks * bs * kvw, no = (size_t)T * qw;
    void *gq = g_act(qkv, (size_t)T * ld), *c0[2] = {g_act(NULL, cn), g_act(NULL, cn)}, *c1[2] = {g_act(NULL, cn),
                                                                                                 g_act(NULL, cn)};
    void *gi[4] = {g_ints(pos, T), g_ints(seq, T), g_ints(slots, T), g_ints(tables, 3)};
    kattn_batch b0 = {T, gi[0], gi[1], gi[2], gi[3], max_blocks, bs, T - 1, pos, seq, 0, 0, 0, 0};
    kattn_batch b1 = b0;
    b1.kv_dtype = KV_DTYPE_ACT, b1.kv_head_dim = 7, b1.kv_scale_off = 4096;
    G.iface->kv_store(G.ctx, c0[0], c0[1], (uint16_t *)gq + qw, (uint16_t *)gq + qw + kvw, ld, kvw, &b0);
    G.iface->kv_store(G.ctx, c1[0], c1[1], (uint16_t *)gq + qw, (uint16_t *)gq + qw + kvw, ld, kvw, &b1);
    float *k0 = g_get("bf16 guard", c0[0], cn), *k1 = g_get("bf16 guard", c1[0], cn);
    float *v0 = g_get("bf16 guard", c0[1], cn), *v1 = g_get("bf16 guard", c1[1], cn);
    expect(!memcmp(k0, k1, cn * 4) && !memcmp(v0, v1, cn * 4),
           "kv_store kv_dtype 0 with kv_head_dim 7, kv_scale_off 4096: the bf16 cache, bitwise");
    free(k0), free(k1), free(v0), free(v1);
    float scale = 1.0f / sqrtf((float)d);
    int was = gpu_switch("GLMTP_GQA_ATTENTION", 0);
    for (int k = 0; k < 3; k++) { /* per-head, grouped, tensor-core prefill */
        gpu_switch("GLMTP_GQA_ATTENTION", k == 1);
        kattn_batch a0 = b0, a1 = b1;
        if (k < 2) a0.host_pos = a1.host_pos = NULL, a0.host_seq = a1.host_seq = NULL;
        a0.serial = a1.serial = 0;
        void *o0 = g_act(NULL, no), *o1 = g_act(NULL, no);
        G.iface->attention(G.ctx, o0, gq, ld, c0[0], c0[1], &a0, n_q, n_kv, q_per_kv, d, scale);
        a1.serial = 1; /* a new plan */
        G.iface->attention(G.ctx, o1, gq, ld, c0[0], c0[1], &a1, n_q, n_kv, q_per_kv, d, scale);
        static const char *kn[3] = {"per-head", "grouped", "tensor-core prefill"};
        if (k < 2) { /* the kernel meant ran, else the guard guards nothing */
            const char *ran = kernels_cuda_attention_ran(G), *want = k ? "grouped" : "per_head";
            expect(ran && !strcmp(ran, want), "bf16 guard: the %s kernel ran (%s)", want, ran ? ran : "none");
        } else if (!f8_flash_disabled()) {
            int ran = kernels_cuda_flash_variant(G, 0);
            expect(ran != 0, "bf16 guard: a tensor-core prefill variant ran (%d)", ran);
        }
        float *r0 = g_get("bf16 guard", o0, no), *r1 = g_get("bf16 guard", o1, no);
        expect(!memcmp(r0, r1, no * 4), "attention (%s) kv_dtype 0 with kv_head_dim 7, kv_scale_off 4096: bitwise",
               kn[k]);
        free(r0), free(r1), G.iface->free(G.ctx, o0), G.iface->free(G.ctx, o1);
    }
    gpu_switch("GLMTP_GQA_ATTENTION", was);
    free(qkv);
    G.iface->free(G.ctx, gq);
    for (int i = 0; i < 2; i++) G.iface->free(G.ctx, c0[i]), G.iface->free(G.ctx, c1[i]);
    for (int i = 0; i < 4; i++) G.iface->free(G.ctx, gi[i]);
}

/* ---------------------------------------------------------- rope_kv_store */

/* rope_kv_store into fp8 caches: (1) fused against the GPU's rope then
 * kv_store (bitwise: QKV rows and both images); (2) against the CPU's kv_store
 * of the GPU's rotated rows (bitwise: the same bf16 inputs); (3) against the
 * CPU's rope_kv_store: V bitwise, K within one step (see the top). */
static void test_fp8_rope_kv_store_case(int T, int n_q, int n_kv, int d, int rot) {
    int ld = (n_q + 2 * n_kv) * d, kvw = n_kv * d, n_slots = 2 * T + 8, kcol = n_q * d;
    size_t n_rows = (size_t)n_slots * n_kv, qn = (size_t)T * ld;
    float *qkv = rand_bf16(qn, -2.0f, 2.0f);
    int32_t *pos = xmalloc((size_t)T * 4), *slots = xmalloc((size_t)T * 4);
    for (int t = 0; t < T; t++) pos[t] = 37 * t + 5, slots[t] = n_slots - 1 - 2 * t;
    uint8_t *img = f8_poison(n_rows, d);
    void *ga = g_act(qkv, qn), *gb = g_act(qkv, qn), *ca = c_act(qkv, qn);
    void *gc[4], *cc[4]; /* K, V fused; K, V unfused (GPU) / of the GPU's rotated rows (CPU) */
    for (int i = 0; i < 4; i++) gc[i] = f8_up(G, img, n_rows, d), cc[i] = f8_up(C, img, n_rows, d);
    void *gp = g_ints(pos, T), *gs = g_ints(slots, T), *cp = c_ints(pos, T), *cs = c_ints(slots, T);
    kattn_batch bg = f8_batch(T, gp, gp, gs, NULL, 0, 1, 0, n_rows, d);
    kattn_batch bc = f8_batch(T, cp, cp, cs, NULL, 0, 1, 0, n_rows, d);
    float base = 10000.0f * 500.0f;
    G.iface->rope_kv_store(G.ctx, ga, gc[0], gc[1], T, ld, n_q, n_kv, d, rot, base, &bg);
    G.iface->rope(G.ctx, gb, gp, T, ld, n_q + n_kv, d, rot, base);
    G.iface->kv_store(G.ctx, gc[2], gc[3], (uint16_t *)gb + kcol, (uint16_t *)gb + kcol + kvw, ld, kvw, &bg);
    C.iface->rope_kv_store(C.ctx, ca, cc[0], cc[1], T, ld, n_q, n_kv, d, rot, base, &bc);
    char name[128], nm[200];
    snprintf(name, sizeof name, "rope_kv_store fp8 T=%d n_q=%d n_kv=%d d=%d rot=%d", T, n_q, n_kv, d, rot);
    float *a = g_get(name, ga, qn), *b = g_get(name, gb, qn);
    void *crot = c_act(a, qn); /* the GPU's rotated rows, bf16 values, for the CPU's kv_store */
    C.iface->kv_store(C.ctx, cc[2], cc[3], (float *)crot + kcol, (float *)crot + kcol + kvw, ld, kvw, &bc);
    uint8_t *gi[4], *ci[4];
    for (int i = 0; i < 4; i++) gi[i] = f8_down(G, name, gc[i], n_rows, d), ci[i] = f8_down(C, name, cc[i], n_rows, d);
    size_t nbytes = f8_size(n_rows, d);
    expect(!memcmp(a, b, qn * 4) && !memcmp(gi[0], gi[2], nbytes) && !memcmp(gi[1], gi[3], nbytes),
           "%s: bitwise equal to rope then kv_store (QKV rows, both fp8 images)", name);
    snprintf(nm, sizeof nm, "%s: K vs CPU kv_store of the GPU's rotation", name);
    f8_compare(nm, gi[0], ci[2], n_rows, d, 0, 0.0, 0.0);
    snprintf(nm, sizeof nm, "%s: V vs CPU kv_store of the GPU's rows", name);
    f8_compare(nm, gi[1], ci[3], n_rows, d, 0, 0.0, 0.0);
    /* rotated K: the rope test's tolerance (1e-5 + 2^-8 |x|) on max |x|, over 448 */
    snprintf(nm, sizeof nm, "%s: K vs CPU rope_kv_store", name);
    f8_compare(nm, gi[0], ci[0], n_rows, d, 1, 1e-5 / 448.0, BF16_RTOL);
    snprintf(nm, sizeof nm, "%s: V vs CPU rope_kv_store", name);
    f8_compare(nm, gi[1], ci[1], n_rows, d, 0, 0.0, 0.0);
    for (int i = 0; i < 4; i++) free(gi[i]), free(ci[i]), G.iface->free(G.ctx, gc[i]), C.iface->free(C.ctx, cc[i]);
    free(a), free(b), free(img), free(qkv), free(pos), free(slots);
    void *g[] = {ga, gb, gp, gs}, *c[] = {ca, cp, cs, crot};
    for (int i = 0; i < 4; i++) G.iface->free(G.ctx, g[i]), C.iface->free(C.ctx, c[i]);
}

void test_fp8_kv_store(void) {
    test_fp8_kv_store_case(1, 2, 128); /* GLM-4-9B decode */
    test_fp8_kv_store_case(37, 2, 128);
    test_fp8_kv_store_case(9, 4, 64);
    test_fp8_kv_store_case(7, 3, 16);
    test_fp8_kv_store_case(5, 1, 5);   /* odd d: fewer values than lanes */
    test_fp8_kv_store_case(3, 1, 256);
    test_fp8_rope_kv_store_case(1, 32, 2, 128, 64); /* GLM-4-9B decode */
    test_fp8_rope_kv_store_case(5, 4, 2, 16, 8);
    test_fp8_rope_kv_store_case(3, 8, 4, 64, 32);
    test_bf16_guard();
}

/* -------------------------------------------------------------- attention */

/* flash_tol (the tensor-core kernels' rounding of P, and the general
 * kernel's atol and rtol) plus the bf16 rounding of the dequantised K and V
 * (relative error <= u = 2^-8 each), first order, Hoeffding at 8 as in
 * flash_tol. V: output i moves by sum_p w_p v_pi e_pi, terms bounded by
 * u w_p |v_pi|, rows independent. K: score p moves by scale sum_j q_j k_pj
 * e_pj, at most delta_p = u scale sum_j |q_j k_pj| (within a row the errors
 * are not independent: all its values share the scale), and output i by
 * sum_p w_p ds_p (v_pi - o_i), terms bounded by w_p delta_p |v_pi - o_i|.
 * K, V: the fp32 dequantised cache, as the CPU's fp8 attention reads it. */
static float *fp8_tol(const float *qkv, int ld, const tok *tk, int T, const int32_t *tables, int max_blocks, int bs,
                      const float *K, const float *V, int n_q, int n_kv, int q_per_kv, int d, float scale,
                      const float *ref) {
    float *tol = flash_tol(qkv, ld, tk, T, tables, max_blocks, bs, K, V, n_q, n_kv, q_per_kv, d, scale, ref);
    int max_pos = 0;
    for (int t = 0; t < T; t++)
        if (tk[t].p > max_pos) max_pos = tk[t].p;
    const double u = 1.0 / 256.0;
#pragma omp parallel for schedule(dynamic, 8)
    for (int t = 0; t < T; t++) {
        double *w = xmalloc(((size_t)max_pos + 1) * 8), *dl = xmalloc(((size_t)max_pos + 1) * 8);
        double *o = xmalloc((size_t)d * 8), *vv = xmalloc((size_t)d * 8), *vk = xmalloc((size_t)d * 8);
        int s = tk[t].s, np = tk[t].p + 1;
        for (int h = 0; h < n_q; h++) {
            const float *q = qkv + (size_t)t * ld + (size_t)h * d;
            int g = h / q_per_kv;
            double mx = -INFINITY, sum = 0.0;
            for (int p = 0; p < np; p++) {
                size_t slot = (size_t)tables[s * max_blocks + p / bs] * bs + p % bs;
                const float *k = K + (slot * n_kv + g) * d;
                double dot = 0.0, ab = 0.0;
                for (int i = 0; i < d; i++) dot += (double)q[i] * k[i], ab += fabs((double)q[i] * k[i]);
                w[p] = dot * scale, dl[p] = u * scale * ab;
                if (w[p] > mx) mx = w[p];
            }
            for (int p = 0; p < np; p++) sum += (w[p] = exp(w[p] - mx));
            for (int i = 0; i < d; i++) o[i] = vv[i] = vk[i] = 0.0;
            for (int p = 0; p < np; p++) {
                size_t slot = (size_t)tables[s * max_blocks + p / bs] * bs + p % bs;
                const float *v = V + (slot * n_kv + g) * d;
                w[p] /= sum;
                for (int i = 0; i < d; i++) o[i] += w[p] * v[i], vv[i] += w[p] * w[p] * v[i] * v[i];
            }
            for (int p = 0; p < np; p++) {
                size_t slot = (size_t)tables[s * max_blocks + p / bs] * bs + p % bs;
                const float *v = V + (slot * n_kv + g) * d;
                for (int i = 0; i < d; i++) {
                    double c = w[p] * dl[p] * (v[i] - o[i]);
                    vk[i] += c * c;
                }
            }
            size_t off = ((size_t)t * n_q + h) * d;
            for (int i = 0; i < d; i++) tol[off + i] += (float)(8.0 * u * sqrt(vv[i]) + 8.0 * sqrt(vk[i]));
        }
        free(w), free(dl), free(o), free(vv), free(vk);
    }
    return tol;
}

typedef struct {
    int n_seqs, max_blocks, bs, n_kv, q_per_kv, n_q, d, n_slots;
    const int32_t *tables;
    size_t n_rows;
    void *gk, *gv, *ck, *cv; /* fp8 caches on both backends */
} f8_setup;

/* Poisoned fp8 caches of n_blocks blocks for tables [n_seqs, max_blocks];
 * n_q 0: n_kv * q_per_kv. */
static f8_setup f8_create(int n_seqs, int max_blocks, const int32_t *tables, int n_blocks, int bs, int n_kv,
                          int q_per_kv, int n_q, int d) {
    f8_setup u = {n_seqs, max_blocks, bs, n_kv, q_per_kv, n_q ? n_q : n_kv * q_per_kv, d, n_blocks * bs, tables, 0,
                  NULL, NULL, NULL, NULL};
    u.n_rows = (size_t)u.n_slots * n_kv;
    uint8_t *img = f8_poison(u.n_rows, d);
    u.gk = f8_up(G, img, u.n_rows, d), u.gv = f8_up(G, img, u.n_rows, d);
    u.ck = f8_up(C, img, u.n_rows, d), u.cv = f8_up(C, img, u.n_rows, d);
    free(img);
    return u;
}

static void f8_destroy(f8_setup *u) {
    G.iface->free(G.ctx, u->gk), G.iface->free(G.ctx, u->gv), C.iface->free(C.ctx, u->ck), C.iface->free(C.ctx, u->cv);
}

/* The dequantised cache (byte value * scale in fp32, as both backends' fp32
 * paths), and (round) the same rounded to bf16 as the tensor cores get it. */
static float *f8_dequant(const uint8_t *img, size_t n_rows, int d, int round) {
    float lut[256], *x = xmalloc(n_rows * (size_t)d * 4);
    fp8_e4m3_table(lut);
    for (size_t r = 0; r < n_rows; r++) {
        float s = f8_scale(img, n_rows, d, r);
        for (int i = 0; i < d; i++) {
            float v = lut[img[r * d + i]] * s;
            x[r * d + i] = round ? bfr(v) : v;
        }
    }
    return x;
}

/* One step: kv_store into the fp8 caches on both (images bitwise equal), the
 * CPU's fp8 attention (co8) and its attention over the bf16-rounded dequantised
 * cache (cob), then on the GPU the per-head kernel (against co8), the grouped
 * one where it applies, and with flash set both tensor-core prefill variants
 * (each against cob with flash_tol and co8 with fp8_tol); each checks that
 * its kernel ran. */
static void f8_step(const char *what, f8_setup *u, const tok *tk, int T, int flash) {
    static uint64_t serial = 50000;
    int n_kv = u->n_kv, q_per_kv = u->q_per_kv, n_q = u->n_q, d = u->d, bs = u->bs, max_blocks = u->max_blocks;
    int qw = n_q * d, kvw = n_kv * d, ld = qw + 2 * kvw + (d % 8 ? 1 : 8);
    float *qkv = rand_bf16((size_t)T * ld, -1.5f, 1.5f);
    int32_t *pos = xmalloc((size_t)T * 4), *seq = xmalloc((size_t)T * 4), *slots = xmalloc((size_t)T * 4);
    int max_pos = 0;
    for (int t = 0; t < T; t++) {
        pos[t] = tk[t].p, seq[t] = tk[t].s;
        slots[t] = u->tables[tk[t].s * max_blocks + tk[t].p / bs] * bs + tk[t].p % bs;
        if (tk[t].p > max_pos) max_pos = tk[t].p;
    }
    size_t nt = (size_t)u->n_seqs * max_blocks, no = (size_t)T * qw, cn = u->n_rows * (size_t)d;
    void *gq = g_act(qkv, (size_t)T * ld), *cq = c_act(qkv, (size_t)T * ld);
    void *g_i[4] = {g_ints(pos, T), g_ints(seq, T), g_ints(slots, T), g_ints(u->tables, nt)};
    void *c_i[4] = {c_ints(pos, T), c_ints(seq, T), c_ints(slots, T), c_ints(u->tables, nt)};
    kattn_batch gb = f8_batch(T, g_i[0], g_i[1], g_i[2], g_i[3], max_blocks, bs, max_pos, u->n_rows, d);
    kattn_batch cb = f8_batch(T, c_i[0], c_i[1], c_i[2], c_i[3], max_blocks, bs, max_pos, u->n_rows, d);
    G.iface->kv_store(G.ctx, u->gk, u->gv, (uint16_t *)gq + qw, (uint16_t *)gq + qw + kvw, ld, kvw, &gb);
    C.iface->kv_store(C.ctx, u->ck, u->cv, (float *)cq + qw, (float *)cq + qw + kvw, ld, kvw, &cb);
    char name[200], nm[260];
    snprintf(name, sizeof name, "fp8 attention %s n_kv=%d q/kv=%d n_q=%d d=%d T=%d", what, n_kv, q_per_kv, n_q, d, T);
    uint8_t *img[4] = {f8_down(G, name, u->gk, u->n_rows, d), f8_down(G, name, u->gv, u->n_rows, d),
                       f8_down(C, name, u->ck, u->n_rows, d), f8_down(C, name, u->cv, u->n_rows, d)};
    snprintf(nm, sizeof nm, "kv_store fp8 %s (paged): K", what);
    f8_compare(nm, img[0], img[2], u->n_rows, d, 0, 0.0, 0.0);
    snprintf(nm, sizeof nm, "kv_store fp8 %s (paged): V", what);
    f8_compare(nm, img[1], img[3], u->n_rows, d, 0, 0.0, 0.0);
    /* the references read the CPU's images; equal to the GPU's when the two lines above pass */
    float *Kd = f8_dequant(img[2], u->n_rows, d, 0), *Vd = f8_dequant(img[3], u->n_rows, d, 0);
    float *Kb = f8_dequant(img[2], u->n_rows, d, 1), *Vb = f8_dequant(img[3], u->n_rows, d, 1);
    void *cbk = c_act(Kb, cn), *cbv = c_act(Vb, cn);
    kattn_batch cb0 = cb;
    cb0.kv_dtype = KV_DTYPE_ACT, cb0.kv_head_dim = 0, cb0.kv_scale_off = 0;
    float scale = 1.0f / sqrtf((float)d);
    float *co8 = c_act(NULL, no), *cob = c_act(NULL, no);
    C.iface->attention(C.ctx, co8, cq, ld, u->ck, u->cv, &cb, n_q, n_kv, q_per_kv, d, scale);
    C.iface->attention(C.ctx, cob, cq, ld, cbk, cbv, &cb0, n_q, n_kv, q_per_kv, d, scale);
    int grouped = q_per_kv >= 2 && q_per_kv <= 16 && (d == 64 || d == 128);
    float *tolb = NULL, *tol8 = NULL;
    if (grouped || flash) {
        tolb = flash_tol(qkv, ld, tk, T, u->tables, max_blocks, bs, Kb, Vb, n_q, n_kv, q_per_kv, d, scale, cob);
        tol8 = fp8_tol(qkv, ld, tk, T, u->tables, max_blocks, bs, Kd, Vd, n_q, n_kv, q_per_kv, d, scale, co8);
    }
    int was = gpu_switch("GLMTP_GQA_ATTENTION", 0);
    /* runs: 0 per-head, 1 grouped (host_pos NULL), 2 and 3 prefill variants 1 and 2 */
    for (int k = 0; k < 4; k++) {
        if ((k == 1 && !grouped) || (k >= 2 && !flash)) continue;
        gpu_switch("GLMTP_GQA_ATTENTION", k == 1);
        kattn_batch b = gb;
        if (k >= 2) {
            b.host_pos = pos, b.host_seq = seq, b.serial = ++serial;
            kernels_cuda_flash_variant(G, k - 1);
        }
        void *go = g_act(NULL, no);
        G.iface->attention(G.ctx, go, gq, ld, u->gk, u->gv, &b, n_q, n_kv, q_per_kv, d, scale);
        static const char *kn[4] = {"per-head", "grouped", "prefill variant 1", "prefill variant 2"};
        snprintf(nm, sizeof nm, "%s [%s]", name, kn[k]);
        float *got = g_get(nm, go, no);
        if (k < 2) {
            const char *ran = kernels_cuda_attention_ran(G), *want = k ? "grouped" : "per_head";
            expect(ran && !strcmp(ran, want), "%s: the %s kernel ran (%s)", nm, want, ran ? ran : "none");
        } else {
            int ran = kernels_cuda_flash_variant(G, f8_env_variant());
            if (!f8_flash_disabled()) expect(ran == k - 1, "%s: variant %d ran (%d)", nm, k - 1, ran);
        }
        if (k == 0) { /* the same fp32 K/V as the CPU: the bf16 per-head tolerance (test_gpu_attention.c) */
            check(nm, got, co8, no, 1e-4, BF16_RTOL);
        } else {
            char nm2[300];
            snprintf(nm2, sizeof nm2, "%s vs bf16 K/V", nm);
            check_tol(nm2, got, cob, tolb, no);
            snprintf(nm2, sizeof nm2, "%s vs fp8 CPU", nm);
            check_tol(nm2, got, co8, tol8, no);
        }
        free(got), G.iface->free(G.ctx, go);
    }
    gpu_switch("GLMTP_GQA_ATTENTION", was);
    for (int i = 0; i < 4; i++) free(img[i]);
    free(Kd), free(Vd), free(Kb), free(Vb), free(tolb), free(tol8), free(qkv), free(pos), free(seq), free(slots);
    G.iface->free(G.ctx, gq);
    void *c[] = {cq, cbk, cbv, co8, cob};
    for (int i = 0; i < 5; i++) C.iface->free(C.ctx, c[i]);
    for (int i = 0; i < 4; i++) G.iface->free(G.ctx, g_i[i]), C.iface->free(C.ctx, c_i[i]);
}

/* test_gpu_attention.c's paged case: four sequences on shuffled blocks (13
 * poison only), a multi-sequence prefill, then a mixed step. */
static void f8_paged(int n_kv, int q_per_kv, int d) {
    static const int32_t tables[16] = {7, 2, 9, 13, 4, 12, 13, 13, 0, 13, 13, 13, 15, 3, 11, 5};
    tok s1[23], s2[9];
    int T1 = 0, T2 = 0;
    for (int p = 0; p < 13; p++) s1[T1++] = (tok){3, p};
    for (int p = 0; p < 5; p++) s1[T1++] = (tok){0, p};
    for (int p = 0; p < 5; p++) s1[T1++] = (tok){1, p};
    s2[T2++] = (tok){1, 5};
    for (int p = 5; p < 11; p++) s2[T2++] = (tok){0, p};
    s2[T2++] = (tok){3, 13};
    s2[T2++] = (tok){2, 0};
    f8_setup u = f8_create(4, 4, tables, 16, 4, n_kv, q_per_kv, 0, d);
    f8_step("multi-seq prefill", &u, s1, T1, 0);
    f8_step("mixed decode+prefill", &u, s2, T2, 0);
    f8_destroy(&u);
}

/* Shuffled tables for n_seqs sequences of max_blocks blocks out of a pool
 * with two spare (poison-only) blocks. */
static int32_t *f8_tables(int n_seqs, int max_blocks, int *n_blocks) {
    int n = n_seqs * max_blocks + 2;
    int32_t *ids = xmalloc((size_t)n * 4);
    for (int i = 0; i < n; i++) ids[i] = i;
    for (int i = n - 1; i > 0; i--) {
        int j = (int)(rng_next(&g_rng) % (uint64_t)(i + 1)), t = ids[i];
        ids[i] = ids[j], ids[j] = t;
    }
    *n_blocks = n;
    return ids;
}

/* One sequence: a prefill of ctx tokens (tensor cores: runs of >= 16), then
 * two decode tokens at ctx and ctx / 3 (few (token, head) pairs: the split
 * kernels). n_q 0: all of the groups' heads. */
static void f8_long(int n_kv, int q_per_kv, int n_q, int d, int ctx) {
    int bs = 16, max_blocks = (ctx + bs) / bs + 1, n_blocks;
    int32_t *tables = f8_tables(1, max_blocks, &n_blocks);
    f8_setup u = f8_create(1, max_blocks, tables, n_blocks, bs, n_kv, q_per_kv, n_q, d);
    tok *pre = xmalloc(sizeof(tok) * (size_t)ctx);
    for (int p = 0; p < ctx; p++) pre[p] = (tok){0, p};
    char what[64];
    snprintf(what, sizeof what, "prefill %d", ctx);
    f8_step(what, &u, pre, ctx, d == 64 || d == 128);
    tok dec[2] = {{0, ctx}, {0, ctx / 3}};
    snprintf(what, sizeof what, "decode at %d and %d (split)", ctx, ctx / 3);
    f8_step(what, &u, dec, 2, 0);
    f8_destroy(&u);
    free(pre), free(tables);
}

static int f8_run(tok *tk, int T, int s, int p0, int n) {
    for (int i = 0; i < n; i++) tk[T + i] = (tok){s, p0 + i};
    return T + n;
}

/* A prefill chunk at an offset between decode tokens of other sequences
 * (test_gpu_attention.c's case (b)), in two steps. */
static void f8_mixed(int n_kv, int q_per_kv, int d, int bs) {
    static tok tk[400];
    int n_blocks, max_blocks = (360 + bs - 1) / bs;
    int32_t *tables = f8_tables(4, max_blocks, &n_blocks);
    f8_setup u = f8_create(4, max_blocks, tables, n_blocks, bs, n_kv, q_per_kv, 0, d);
    int T = f8_run(tk, 0, 0, 0, 150);
    T = f8_run(tk, T, 1, 0, 40);
    T = f8_run(tk, T, 2, 0, 70);
    T = f8_run(tk, T, 3, 0, 5);
    f8_step("step 1: 150+40+70+5 from pos 0", &u, tk, T, 1);
    T = f8_run(tk, 0, 1, 40, 1);
    T = f8_run(tk, T, 0, 150, 200);
    T = f8_run(tk, T, 2, 70, 1);
    T = f8_run(tk, T, 3, 5, 1);
    f8_step("step 2: decode, 200 at pos 150, 2 decode", &u, tk, T, 1);
    f8_destroy(&u);
    free(tables);
}

/* Every attention kernel over an fp8 cache; the environment's switches
 * (grouped kernel, flash variant) are restored after each step. */
void test_fp8_attention(void) {
    f8_paged(1, 2, 16);
    f8_paged(2, 16, 128); /* GLM-4-9B chat, tp 1 */
    f8_paged(4, 8, 128);  /* chat-1m */
    f8_paged(1, 1, 5);    /* odd head dim: per-head only */
    f8_paged(2, 2, 64);
    f8_paged(1, 2, 256);
    f8_long(2, 16, 0, 128, 1000); /* GLM-4-9B heads */
    f8_long(1, 4, 0, 64, 300);
    f8_long(1, 16, 4, 128, 700); /* tp 8: 4 q heads on the one replicated KV head */
    f8_mixed(2, 2, 128, 16);
    f8_mixed(1, 4, 64, 32);
}
