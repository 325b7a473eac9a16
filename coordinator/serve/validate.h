/* validate.h: a GenerateRequest from the channel checked and turned into an
 * engine request, with no sockets, threads or scheduler involved (the network
 * thread calls it as a request arrives, net.c; so does the fuzz harness tests/fuzz/fuzz_serve.c).
 * The checks that need the running server (duplicate request ids, KV room)
 * stay in loop.c. */
#ifndef GLMTP_SERVE_VALIDATE_H
#define GLMTP_SERVE_VALIDATE_H

#include <stddef.h>

#include "../fronts/requests.h"
#include "glmtp.pb-c.h"

/* Validates pr through the JSONL parser (req_parse: the same fields, limits
 * and messages as a `generate` line) plus the channel's own fields (finite
 * temperature and top_p, stop_ids in [0, n_vocab)). Returns 0 with *out
 * filled (the caller owns it: gen_request_free), or -1 with err holding
 * "field 'x': ..." (no request name; the caller adds it) and *out zeroed.
 * The request id is not looked at. GLM-4V: the request's image bytes are
 * decoded here (image_input_bytes: JPEG, PNG, WebP; a bad image, or one with
 * nowhere to go, is "field 'image': ..."), and the chat message marked image
 * (or the token ids' image tokens) places them. */
int srv_validate_request(const Glmtp__GenerateRequest *pr, const req_context *ctx, gen_request *out /* OUT */,
                         char *err, size_t errlen);

#endif
