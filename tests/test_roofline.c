/* The analytic model against figures worked out by hand for glm-4-9b-chat
 * (glm4-spec.md sections 2.1, 6 and 8):
 *   weights read per decode step at tp=1: all bf16 weights but the embedding,
 *     9,399,951,360 params - 151552*4096 = 8,779,194,368 params -> 17.558 GB
 *   KV per token: 2 (K,V) * 40 layers * 2 groups * 128 * 2 bytes = 40 KiB at tp=1,
 *     20 KiB per rank at tp >= 2 (one group, replicated beyond tp = 2)
 *   decode floor on one H100: 17.558e9 B / 3.35e12 B/s = 5.241 ms */
#include <math.h>
#include <stdio.h>

#include "../coordinator/base/presets.h"
#include "../coordinator/bench/roofline.h"

static int passed, failed;

static void near(const char *what, double got, double want, double rel) {
    int ok = fabs(got - want) <= rel * fabs(want);
    passed += ok;
    failed += !ok;
    printf("%s %-55s got %.6g want %.6g\n", ok ? "ok  " : "FAIL", what, got, want);
}

/* --plan 1048576 for glm-4-9b-chat-1m (4 KV groups), worked by hand:
 *   params: per layer qkv 5120 x 4096 + bias 5120, dense 4096^2, h_to_4h
 *     2 x 13696 x 4096, 4h_to_h 13696 x 4096 = 206,050,304 (+ 2 norms of 4096);
 *     40 layers + final norm + LM head and embedding (151552 x 4096 each)
 *     = 9,483,857,920 -> 18,967,715,840 bytes held at tp 1; read per decode
 *     step (no embedding) 17,726,201,856 bytes
 *   KV per token: 2 x 40 x 4 x 128 x 2 = 81,920 bytes; x 1,048,576 = 80 GiB;
 *     fp8: (1 + 4/128) bytes per element -> 42,240 bytes per token
 *   activations (8192-token step, bf16): 8192 x (3 x 4096 + 5120 + 4096 + 3 x
 *     13696) x 2 = 1,025,507,328, + 256 x 151552 x 4 logits = 1,180,696,576
 *   H200 bf16, tp 1: 18,967,715,840 + 85,899,345,920 + 1,180,696,576 + 512 MiB
 *     = 106,584,629,248 <= 0.9 x 141e9 = 126.9e9: one GPU
 *   H100 bf16: tp 1 needs 106.6e9 > 72e9; tp 2 holds half the KV (2 groups
 *     per rank) and half the sharded weights: 54,282,502,144 <= 72e9: two GPUs
 *   H100 fp8, tp 1: 18,967,715,840 + 44,291,850,240 + 1,180,696,576 + 512 MiB
 *     = 64,977,133,568 <= 72e9: one GPU
 *   prefill at 1M on one H200: linear 2 x 8,862,769,152 FLOPs per token x 2^20
 *     + attention 2 x 2^40 x 32 x 128 x 40 = 3.78878e17 FLOPs / 989e12 = 383.09 s
 *   decode at 1M on one H200: (17,726,201,856 + 2^20 x 81,920) B / 4.8e12 B/s
 *     = 21.589 ms (bf16); (17,726,201,856 + 2^20 x 42,240) / 4.8e12 = 12.920 ms (fp8) */
static void plan_1m(const glm_config *c) {
    const hw_link *l = roofline_link("nvlink4");
    double bf16 = roofline_kv_elem_bytes("bf16", 128), fp8 = roofline_kv_elem_bytes("fp8", 128);
    near("KV element bytes, bf16", bf16, 2.0, 0);
    near("KV element bytes, fp8 (1 + an fp32 scale per 128)", fp8, 1.03125, 0);
    near("activation reserve, tp=1 (bytes)", roofline_act_bytes(c, 1, 8192), 1180696576.0, 1e-12);
    roofline_plan p;
    near("1M bf16 on H200: GPUs", roofline_plan_fit(c, roofline_gpu("h200"), l, 1048576, bf16, 0.9, &p), 1, 0);
    near("1M bf16 on H200: bytes needed per GPU", p.need_bytes, 106584629248.0, 1e-12);
    near("1M bf16 on H200: KV bytes", p.kv_bytes, 85899345920.0, 0);
    near("1M bf16 on H200: prefill (s)", p.prefill_s, 3.78878e17 / 989e12, 1e-5);
    near("1M bf16 on H200: decode (s per token)", p.decode_s, (17726201856.0 + 1048576.0 * 81920) / 4.8e12, 1e-9);
    near("1M bf16 on H100: GPUs", roofline_plan_fit(c, roofline_gpu("h100"), l, 1048576, bf16, 0.9, &p), 2, 0);
    near("1M bf16 on H100, tp=2: bytes needed per GPU", p.need_bytes, 54282502144.0, 1e-12);
    near("1M fp8 on H100: GPUs", roofline_plan_fit(c, roofline_gpu("h100"), l, 1048576, fp8, 0.9, &p), 1, 0);
    near("1M fp8 on H100: bytes needed per GPU", p.need_bytes, 64977133568.0, 1e-12);
    roofline_plan_fit(c, roofline_gpu("h200"), l, 1048576, fp8, 0.9, &p);
    near("1M fp8 on H200: decode (s per token)", p.decode_s, (17726201856.0 + 1048576.0 * 42240) / 4.8e12, 1e-9);
    near("1M bf16 on A100: GPUs", roofline_plan_fit(c, roofline_gpu("a100"), l, 1048576, bf16, 0.9, &p), 2, 0);
}

int main(void) {
    glm_config c;
    preset_config(preset_find("glm-4-9b-chat"), &c);
    roofline_model m;
    roofline_sizes(&c, 1, &m);
    near("weights read per decode step, tp=1 (bytes)", m.weight_bytes, 2.0 * 8779194368.0, 1e-9);
    near("weights held, tp=1 (bytes)", m.weight_bytes_held, 2.0 * 9399951360.0, 1e-9);
    near("KV per token, tp=1 (bytes)", m.kv_bytes_token, 40960, 0);
    for (int tp = 2; tp <= 8; tp *= 2) {
        roofline_sizes(&c, tp, &m);
        char what[64];
        snprintf(what, sizeof what, "KV per token per rank, tp=%d (bytes)", tp);
        near(what, m.kv_bytes_token, 20480, 0);
    }
    glm_config c1m;
    preset_config(preset_find("glm-4-9b-chat-1m"), &c1m);
    roofline_sizes(&c1m, 1, &m);
    near("chat-1m KV per token, tp=1 (bytes)", m.kv_bytes_token, 81920, 0);
    roofline_sizes(&c1m, 4, &m);
    near("chat-1m KV per token per rank, tp=4 (bytes)", m.kv_bytes_token, 20480, 0);
    roofline_time t = roofline_decode(&c, 1, roofline_gpu("h100"), roofline_link("nvlink4"), 1, 0);
    near("decode step, tp=1, H100, empty context (s)", t.total, 17558388736.0 / 3.35e12, 1e-9);
    /* tp=2: half the sharded weights plus the replicated norms; 80 all-reduces of 8 KiB. */
    t = roofline_decode(&c, 2, roofline_gpu("h100"), roofline_link("nvlink4"), 1, 0);
    near("decode comm, tp=2, NVLink 4 (s)", t.comm, 80 * (8e-6 + 8192.0 / 450e9), 1e-9);
    plan_1m(&c1m);
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
