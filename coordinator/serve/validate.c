/* GenerateRequest validation (see validate.h): the request becomes a JSONL
 * line and goes through req_parse, so both fronts accept exactly the same. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../fronts/image_input.h"
#include "validate.h"

/* The request as the JSON object a `generate` line would hold. Returns a
 * malloc'ed string (caller frees); aborts when memory runs out. */
static char *request_json(const Glmtp__GenerateRequest *pr) {
    cJSON *o = cJSON_CreateObject();
    if (pr->input_case == GLMTP__GENERATE_REQUEST__INPUT_TEXT) {
        cJSON_AddStringToObject(o, "prompt", pr->text ? pr->text : "");
    } else if (pr->input_case == GLMTP__GENERATE_REQUEST__INPUT_CHAT) {
        cJSON *a = cJSON_AddArrayToObject(o, "messages");
        for (size_t i = 0; pr->chat && i < pr->chat->n_messages; i++) {
            const Glmtp__ChatMessage *m = pr->chat->messages[i];
            cJSON *mo = cJSON_CreateObject();
            if (m->role) cJSON_AddStringToObject(mo, "role", m->role);
            cJSON_AddStringToObject(mo, "content", m->content ? m->content : "");
            if (m->metadata && m->metadata[0]) cJSON_AddStringToObject(mo, "metadata", m->metadata);
            if (m->has_image && m->image) cJSON_AddStringToObject(mo, "image", ""); /* a mark: the bytes come apart */
            cJSON_AddItemToArray(a, mo);
        }
    } else if (pr->input_case == GLMTP__GENERATE_REQUEST__INPUT_TOKEN_IDS) {
        cJSON *a = cJSON_AddArrayToObject(o, "input_ids");
        for (size_t i = 0; pr->token_ids && i < pr->token_ids->n_ids; i++)
            cJSON_AddItemToArray(a, cJSON_CreateNumber(pr->token_ids->ids[i]));
    }
    if (pr->has_temperature) cJSON_AddNumberToObject(o, "temperature", pr->temperature);
    if (pr->has_top_p) cJSON_AddNumberToObject(o, "top_p", pr->top_p);
    if (pr->has_top_k) cJSON_AddNumberToObject(o, "top_k", pr->top_k);
    if (pr->has_seed) cJSON_AddNumberToObject(o, "seed", (double)pr->seed);
    if (pr->has_max_new_tokens) cJSON_AddNumberToObject(o, "max_new_tokens", pr->max_new_tokens);
    if (pr->has_keep_prefix) {
        if (pr->keep_prefix < 0) cJSON_AddTrueToObject(o, "keep_prefix");
        else cJSON_AddNumberToObject(o, "keep_prefix", pr->keep_prefix);
    }
    if (pr->n_stop) {
        cJSON *a = cJSON_AddArrayToObject(o, "stop");
        for (size_t i = 0; i < pr->n_stop; i++) cJSON_AddItemToArray(a, cJSON_CreateString(pr->stop[i]));
    }
    char *text = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!text) abort();
    return text;
}

int srv_validate_request(const Glmtp__GenerateRequest *pr, const req_context *ctx, gen_request *out, char *err,
                         size_t errlen) {
    memset(out, 0, sizeof *out);
    if ((pr->has_temperature && !isfinite(pr->temperature)) || (pr->has_top_p && !isfinite(pr->top_p))) {
        snprintf(err, errlen, "field '%s': must be a finite number",
                 pr->has_temperature && !isfinite(pr->temperature) ? "temperature" : "top_p");
        return -1;
    }
    /* GLM-4V: the image's bytes, decoded here; the chat message marked image or
     * the token ids' image tokens place it (req_parse_image). */
    int marked = -1;
    for (size_t i = 0; pr->input_case == GLMTP__GENERATE_REQUEST__INPUT_CHAT && pr->chat && i < pr->chat->n_messages;
         i++)
        if (pr->chat->messages[i]->has_image && pr->chat->messages[i]->image && marked < 0) marked = (int)i;
    float *px = NULL;
    uint64_t hash = 0;
    if (pr->has_image) {
        if (pr->input_case == GLMTP__GENERATE_REQUEST__INPUT_TEXT) {
            snprintf(err, errlen, "field 'image': a text prompt takes no image (give chat, with the image's message "
                     "marked image, or token_ids holding begin-of-image, placeholder, end-of-image)");
            return -1;
        }
        if (pr->input_case == GLMTP__GENERATE_REQUEST__INPUT_CHAT && marked < 0) {
            snprintf(err, errlen, "field 'image': no chat message has image set (ChatMessage.image places it)");
            return -1;
        }
        char why[768];
        if (image_input_bytes(pr->image.data, pr->image.len, ctx->cfg, &px, &hash, why, sizeof why)) {
            snprintf(err, errlen, "field 'image': %s", why);
            return -1;
        }
    } else if (marked >= 0) {
        snprintf(err, errlen, "field 'messages[%d].image': set, but the request has no image bytes "
                 "(GenerateRequest.image)", marked);
        return -1;
    }
    char *text = request_json(pr);
    req_line line;
    req_parse_image(ctx, text, strlen(text), 1, px, hash, &line); /* takes px */
    free(text);
    for (size_t i = 0; !line.error && i < pr->n_stop_ids; i++)
        if (pr->stop_ids[i] < 0 || pr->stop_ids[i] >= ctx->n_vocab) {
            snprintf(err, errlen, "field 'stop_ids[%zu]': must be a token id in [0, %d)", i, ctx->n_vocab);
            req_line_free(&line);
            return -1;
        }
    if (line.error) { /* "line 1: field ...": the caller names the request instead */
        snprintf(err, errlen, "%s", strncmp(line.error, "line 1: ", 8) ? line.error : line.error + 8);
        req_line_free(&line);
        return -1;
    }
    *out = line.g;
    memset(&line.g, 0, sizeof line.g);
    req_line_free(&line);
    return 0;
}
