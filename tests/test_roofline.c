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
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
