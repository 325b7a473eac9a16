/* Fuzz target: config.json text through config_parse (config_load's parser
 * and validation), then config_check_tp for 1..8 ranks and config_hash. An
 * accepted config must satisfy what the loader relies on later. */
#include <math.h>

#include "../../worker/config.h"
#include "fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    glm_config c;
    char err[1024];
    if (config_parse(&c, (const char *)data, size, "config.json", err, sizeof err)) {
        FUZZ_CHECK(err[0] != 0, "a refused config has a message");
        return 0;
    }
    FUZZ_CHECK(c.n_layers >= 1 && c.hidden >= 1 && c.ffn >= 1 && c.n_heads >= 1 && c.n_kv >= 1,
               "dimensions are positive");
    FUZZ_CHECK(c.n_heads % c.n_kv == 0, "KV groups divide the heads");
    FUZZ_CHECK(c.head_dim >= 2 && c.head_dim % 2 == 0 && c.rot_dim % 2 == 0 && c.rot_dim <= c.head_dim,
               "head and rotary dims are even, rotary within the head");
    FUZZ_CHECK(c.vocab >= 1 && c.seq_len >= 1 && c.eps > 0 && isfinite(c.eps) && c.rope_base > 0 && isfinite(c.rope_base),
               "vocab, context, eps, base positive and finite");
    FUZZ_CHECK(c.n_eos >= 0 && c.n_eos <= GLM_MAX_EOS, "eos count within GLM_MAX_EOS");
    for (int tp = 1; tp <= 8; tp++) (void)config_check_tp(&c, tp, err, sizeof err);
    (void)config_hash(&c);
    return 0;
}
