/* Fuzz target: one frame body of the serve channel, as net.c handle_frame
 * and loop.c intake see it: protobuf-c unpacks a ClientMessage; Auth is
 * compared with the server's token (util_secret_equal); a GenerateRequest
 * goes through srv_validate_request (the JSONL parser's checks plus the
 * channel's own) with the real vocabulary and a 2048-token context; Cancel's
 * id is read. Sockets, threads and the scheduler are left out. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../../coordinator/serve/validate.h"
#include "../../coordinator/text/chat_template.h"
#include "../../worker/util.h"
#include "fuzz.h"

static req_defaults defaults;
static char *preamble;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fuzz_tokenizer();
    req_defaults_load(&defaults, fuzz_tmpdir());
    preamble = chat_tool_preamble(fuzz_tmpdir());
    return 0;
}

static void check_generate(const Glmtp__GenerateRequest *pr) {
    const tokenizer *t = fuzz_tokenizer();
    req_context ctx = {&defaults, t, preamble, 2048, tok_n_total(t), 0, NULL, 0}; /* no cfg: images refused */
    gen_request g;
    char err[1200];
    if (srv_validate_request(pr, &ctx, &g, err, sizeof err) == 0) {
        FUZZ_CHECK(g.n_prompt >= 1 && g.n_prompt + g.max_new <= ctx.seq_len, "an accepted request fits the context");
        for (int i = 0; i < g.n_prompt; i++)
            FUZZ_CHECK(g.prompt[i] >= 0 && g.prompt[i] < ctx.n_vocab, "prompt ids in the vocabulary");
        FUZZ_CHECK(isfinite(g.temperature) && g.temperature >= 0, "finite temperature");
        gen_request_free(&g);
    } else {
        FUZZ_CHECK(err[0] != 0 && strncmp(err, "line ", 5) != 0, "a refusal names the field, not a line");
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    Glmtp__ClientMessage *m = glmtp__client_message__unpack(NULL, size, data);
    if (!m) return 0; /* BAD_FRAME */
    switch (m->msg_case) {
    case GLMTP__CLIENT_MESSAGE__MSG_AUTH:
        if (m->auth->token) (void)util_secret_equal(m->auth->token, "fuzz-token");
        break;
    case GLMTP__CLIENT_MESSAGE__MSG_GENERATE:
        check_generate(m->generate);
        break;
    case GLMTP__CLIENT_MESSAGE__MSG_CANCEL:
        FUZZ_CHECK(!m->cancel->request_id || strlen(m->cancel->request_id) < size, "an id inside the frame");
        break;
    default:
        break;
    }
    /* What was unpacked packs again (the server echoes ids back in replies). */
    size_t n = glmtp__client_message__get_packed_size(m);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf) abort();
    FUZZ_CHECK(glmtp__client_message__pack(m, buf) == n, "packs to its packed size");
    free(buf);
    glmtp__client_message__free_unpacked(m, NULL);
    return 0;
}
