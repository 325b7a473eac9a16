/* Fuzz target: one JSONL request line (glmtp generate --input) through
 * req_parse with the real vocabulary, a 2048-token context and greedy
 * defaults. A line without an error must be runnable: a non-empty prompt of
 * valid ids, max_new >= 1 and prompt + max_new within the context. */
#include <math.h>

#include "../../coordinator/fronts/requests.h"
#include "../../coordinator/text/chat_template.h"
#include "fuzz.h"

static req_defaults defaults;
static char *preamble;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fuzz_tokenizer();
    req_defaults_load(&defaults, fuzz_tmpdir()); /* no generation_config.json: greedy, 256 */
    preamble = chat_tool_preamble(fuzz_tmpdir());
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const tokenizer *t = fuzz_tokenizer();
    req_context ctx = {&defaults, t, preamble, 2048, tok_n_total(t), 0, NULL, 0}; /* no cfg: images refused */
    req_line r;
    req_parse(&ctx, (const char *)data, size, 7, &r);
    FUZZ_CHECK(r.id != NULL, "the id is always set (null when absent)");
    if (!r.error) {
        FUZZ_CHECK(r.g.n_prompt >= 1 && r.g.prompt, "a non-empty prompt");
        for (int i = 0; i < r.g.n_prompt; i++)
            FUZZ_CHECK(r.g.prompt[i] >= 0 && r.g.prompt[i] < ctx.n_vocab, "prompt ids in the vocabulary");
        FUZZ_CHECK(r.g.max_new >= 1 && r.g.n_prompt + r.g.max_new <= ctx.seq_len, "fits the context");
        FUZZ_CHECK(isfinite(r.g.temperature) && r.g.temperature >= 0 && r.g.top_p > 0 && r.g.top_p <= 1 &&
                       r.g.top_k >= 0,
                   "sampling parameters in range");
    }
    req_line_free(&r);
    return 0;
}
