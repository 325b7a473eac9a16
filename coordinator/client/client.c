/* glmtp-client: talks to `glmtp serve` over its protobuf channel (see
 * proto/glmtp.proto and wire.h). Its options, with what each does, are the
 * table client_opts below (glmtp-client --help prints it).
 * Exit status: 0 done, 1 the server answered with an error (or unhealthy,
 * or cancel of an unknown id), 2 usage or connection problems. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../../proto/wire.h"
#include "../base/args.h"
#include "client_load.h"
#include "client_wire.h"
#include "glmtp.pb-c.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* client_send, printing the error. */
static int send_msg(int fd, const Glmtp__ClientMessage *m) {
    char err[256];
    int rc = client_send(fd, m, err, sizeof err);
    if (rc) fprintf(stderr, "glmtp-client: %s\n", err);
    return rc;
}

/* Next ServerMessage, or NULL after printing why. */
static Glmtp__ServerMessage *recv_msg(int fd) {
    uint8_t *body;
    char err[256] = "";
    long n = wire_read_frame(fd, &body, 1u << 30, err, sizeof err);
    if (n < 0) fprintf(stderr, "glmtp-client: %s\n", err);
    if (n == 0) fprintf(stderr, "glmtp-client: the server closed the connection\n");
    if (n <= 0) return NULL;
    Glmtp__ServerMessage *m = glmtp__server_message__unpack(NULL, (size_t)n, body);
    free(body);
    if (!m) fprintf(stderr, "glmtp-client: a reply of %ld bytes is not a valid ServerMessage\n", n);
    return m;
}

static int parse_ids(const char *name, const char *text, int **out, int *n) {
    args a;
    args_init(&a, NULL, 0, NULL);
    int rc = args_int_list(&a, name, text, out, n);
    if (rc) fprintf(stderr, "glmtp-client: %s\n", a.err);
    args_free(&a);
    return rc;
}

/* The whole of path ("-": stdin) as a NUL-terminated string the caller frees;
 * NULL after printing why (also for a NUL byte inside: the prompt is text). */
static char *read_all(const char *path) {
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "glmtp-client: --prompt-file %s: %s\n", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    for (size_t k; buf && (k = fread(buf + len, 1, cap - len - 1, f)) > 0;) {
        len += k;
        if (len + 1 == cap) buf = realloc(buf, cap *= 2);
    }
    int bad = !buf || ferror(f);
    if (f != stdin) fclose(f);
    if (bad) {
        fprintf(stderr, "glmtp-client: --prompt-file %s: %s\n", path, buf ? "read error" : "out of memory");
        free(buf);
        return NULL;
    }
    buf[len] = 0;
    if (strlen(buf) != len) {
        fprintf(stderr, "glmtp-client: --prompt-file %s: holds a NUL byte at offset %zu\n", path, strlen(buf));
        free(buf);
        return NULL;
    }
    return buf;
}

/* One Progress message: a bar on stderr when it is a terminal (redrawn in
 * place, ended by a newline once the prompt is in); with --json also a record
 * in rec's "progress" list. Nothing otherwise. */
static void show_progress(const Glmtp__Progress *p, int tty, cJSON *rec) {
    if (rec) {
        cJSON *a = cJSON_GetObjectItemCaseSensitive(rec, "progress");
        if (!a) a = cJSON_AddArrayToObject(rec, "progress");
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "tokens_done", p->tokens_done);
        cJSON_AddNumberToObject(o, "tokens_total", p->tokens_total);
        cJSON_AddNumberToObject(o, "tokens_per_s", p->tokens_per_s);
        cJSON_AddNumberToObject(o, "cached_tokens", p->cached_tokens);
        cJSON_AddNumberToObject(o, "elapsed_s", p->elapsed_s);
        cJSON_AddItemToArray(a, o);
    }
    if (!tty || p->tokens_total <= 0) return;
    int w = 30, fill = (int)((long long)p->tokens_done * w / p->tokens_total);
    double left = p->tokens_per_s > 0 ? (p->tokens_total - p->tokens_done) / p->tokens_per_s : 0;
    fprintf(stderr, "\rprefill [%.*s%*s] %d/%d tokens (%d cached), %.0f tokens/s, %.0f s, %.0f s left%s", fill,
            "##############################", w - fill, "", p->tokens_done, p->tokens_total, p->cached_tokens,
            p->tokens_per_s, p->elapsed_s, left, p->tokens_done >= p->tokens_total ? "\n" : "\033[K");
}

/* --image FILE: the file's bytes (malloc'ed, *n of them), or NULL after printing why. */
static uint8_t *read_image(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    uint8_t *buf = NULL;
    long len = -1;
    if (f && fseek(f, 0, SEEK_END) == 0 && (len = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
        (buf = malloc((size_t)len + 1)) && fread(buf, 1, (size_t)len, f) == (size_t)len) {
        fclose(f);
        *n = (size_t)len;
        return buf;
    }
    fprintf(stderr, "glmtp-client: --image %s: %s\n", path, f ? "read error" : strerror(errno));
    if (f) fclose(f);
    free(buf);
    return NULL;
}

/* --chat FILE: a JSON list of {role, content, metadata?, image?}. With an
 * image (--image), the message with a true "image" carries it, else the first
 * user message. */
static int load_chat(const char *path, Glmtp__ChatMessages *cm, cJSON **keep, int with_image) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return -1;
    }
    static char buf[1 << 20];
    size_t len = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[len] = 0;
    cJSON *j = cJSON_Parse(buf);
    if (!cJSON_IsArray(j)) {
        fprintf(stderr, "glmtp-client: --chat %s: expected a JSON list of {role, content}\n", path);
        cJSON_Delete(j);
        return -1;
    }
    int n = cJSON_GetArraySize(j);
    cm->messages = calloc((size_t)n + 1, sizeof *cm->messages);
    if (!cm->messages) abort();
    for (int i = 0; i < n; i++) {
        const cJSON *o = cJSON_GetArrayItem(j, i);
        Glmtp__ChatMessage *m = calloc(1, sizeof *m);
        if (!m) abort();
        glmtp__chat_message__init(m);
        const cJSON *v;
        if (cJSON_IsString(v = cJSON_GetObjectItemCaseSensitive(o, "role"))) m->role = v->valuestring;
        if (cJSON_IsString(v = cJSON_GetObjectItemCaseSensitive(o, "content"))) m->content = v->valuestring;
        if (cJSON_IsString(v = cJSON_GetObjectItemCaseSensitive(o, "metadata"))) m->metadata = v->valuestring;
        if (with_image && cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "image"))) m->has_image = m->image = 1;
        cm->messages[cm->n_messages++] = m;
    }
    int marked = 0;
    for (size_t i = 0; i < cm->n_messages; i++) marked |= cm->messages[i]->image;
    for (size_t i = 0; with_image && !marked && i < cm->n_messages; i++)
        if (cm->messages[i]->role && strcmp(cm->messages[i]->role, "user") == 0)
            cm->messages[i]->has_image = cm->messages[i]->image = marked = 1;
    *keep = j;
    return 0;
}

static void print_stats(const Glmtp__StatsReply *s) {
    printf("{\"queue_depth\":%d,\"running\":%d,\"kv_blocks_used\":%d,\"kv_blocks_free\":%d,\"tokens_per_s\":%.3f,"
           "\"steps\":%ld,\"preemptions\":%ld,\"tokens_generated\":%ld,\"ranks\":%zu,"
           "\"prefix_cache\":%s,\"prompt_tokens\":%lld,\"cached_tokens\":%lld,\"prefix_hit_rate\":%.4f,"
           "\"kv_blocks_cached\":%d,\"kv_blocks_evicted\":%lld,\"stall_s\":%.3f,\"since_last_step_s\":%.3f}\n",
           s->queue_depth, s->running, s->kv_blocks_used, s->kv_blocks_free, s->tokens_per_s, (long)s->steps,
           (long)s->preemptions, (long)s->tokens_generated, s->n_rank_state, s->prefix_cache ? "true" : "false",
           (long long)s->prompt_tokens, (long long)s->cached_tokens, s->prefix_hit_rate, s->kv_blocks_cached,
           (long long)s->kv_blocks_evicted, s->stall_s, s->since_last_step_s);
}

#ifndef GLMTP_VERSION
#define GLMTP_VERSION "unknown"
#endif

static const args_opt client_opts[] = {
    {"--connect", "ADDR", "the server: HOST:PORT or unix:/path (default 127.0.0.1:7070)"},
    {"--auth-token-file", "F", "send the token in this file first (a server beyond loopback wants it)"},
    {"--prompt", "TEXT", "generate: a raw completion of TEXT"},
    {"--prompt-file", "FILE", "generate: a raw completion of FILE's text (- reads stdin; a 1M-token document is 4-6 MB, within serve's default --max-frame)"},
    {"--chat", "FILE", "generate: a JSON list of {role, content, metadata?} messages"},
    {"--ids", "1,2,3", "generate: from these token ids"},
    {"--image", "FILE", "GLM-4V: send this JPEG/PNG/WebP with --chat (the message with \"image\": true carries it, else the first user message) or --ids (holding begin-of-image, placeholder, end-of-image)"},
    {"--max-new-tokens", "N", "new tokens (default: the server's)"},
    {"--temperature", "T", "sampling temperature, 0 = greedy (default: the server's)"},
    {"--top-p", "P", "nucleus sampling (default: the server's)"},
    {"--top-k", "K", "top-k sampling (default: the server's)"},
    {"--seed", "S", "sampling seed; with --load, the seed of the generated prompts"},
    {"--stop", "STR", "stop when the text contains STR (repeat for several)"},
    {"--stop-ids", "1,2", "stop at any of these token ids"},
    {"--id", "REQUEST_ID", "the request's id, for --cancel from another client (default client-PID)"},
    {"--no-stream", NULL, "one reply at the end instead of streamed deltas"},
    {"--json", NULL, "print one JSON record at the end (text, token_ids, finish_reason, usage, ttft_ms, progress)"},
    {"--no-progress", NULL, "no prefill progress bar (drawn on stderr when it is a terminal, for streamed long prompts)"},
    {"--disconnect-after", "N", "close the connection after N deltas (for tests)"},
    {"--stats", NULL, "print the server's statistics as JSON"},
    {"--health", NULL, "print the server's state; exit 1 unless healthy"},
    {"--cancel", "ID", "cancel the running request with this --id"},
    {"--load", NULL, "load generator: Poisson arrivals, TTFT / TPOT / ITL percentiles, throughput"},
    {"--requests", "N", "--load: requests (default 16)"},
    {"--rate", "R", "--load: requests per second (default 0: all at once)"},
    {"--input-len", "I", "--load: prompt tokens (default 32)"},
    {"--output-len", "O", "--load: new tokens (default 32)"},
    {"--vocab", "V", "--load: prompt ids drawn from [0, V) (default 150000)"},
    {"--json-out", "FILE", "--load: also write the figures as JSON"},
    {"--version", NULL, "print the version and exit"},
    {"--help", NULL, "print this help and exit"},
    {NULL, NULL, NULL},
};

static const args_spec client_spec = {
    "glmtp-client",
    "[--connect ADDR] [--auth-token-file F] --prompt TEXT | --prompt-file FILE | --chat FILE | --ids 1,2,3 [--image FILE] [options]\n"
    "       glmtp-client [--connect ADDR] --stats | --health | --cancel ID\n"
    "       glmtp-client [--connect ADDR] --load --requests N --rate R --input-len I --output-len O [--json-out F]",
    "The client of `glmtp serve` (protobuf channel, proto/glmtp.proto). Exit status: 0 done, 1 the server\n"
    "answered with an error (or is unhealthy, or cancel found no such id), 2 usage or connection problems.",
    {client_opts, NULL},
    NULL,
};

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    if (args_wants_help(argc - 1, argv + 1)) {
        args_print_help(&client_spec, stdout);
        return 0;
    }
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--version") == 0) {
            printf("glmtp-client %s\n", GLMTP_VERSION);
            return 0;
        }
    args a;
    args_init(&a, &client_spec, argc - 1, argv + 1);
    const char *addr = args_str(&a, "--connect", "127.0.0.1:7070");
    const char *token_file = args_str(&a, "--auth-token-file", NULL);
    const char *prompt = args_str(&a, "--prompt", NULL), *chat = args_str(&a, "--chat", NULL);
    const char *prompt_file = args_str(&a, "--prompt-file", NULL);
    const char *image = args_str(&a, "--image", NULL);
    int no_progress = args_flag(&a, "--no-progress");
    const char *ids_s = args_str(&a, "--ids", NULL), *stop_ids_s = args_str(&a, "--stop-ids", NULL);
    const char *cancel = args_str(&a, "--cancel", NULL);
    char defid[64];
    snprintf(defid, sizeof defid, "client-%d", (int)getpid());
    const char *rid = args_str(&a, "--id", defid);
    const char *temp = args_str(&a, "--temperature", NULL), *top_p = args_str(&a, "--top-p", NULL);
    const char *top_k = args_str(&a, "--top-k", NULL), *seed = args_str(&a, "--seed", NULL);
    const char *max_new = args_str(&a, "--max-new-tokens", NULL);
    int stats = args_flag(&a, "--stats"), health = args_flag(&a, "--health"), json = args_flag(&a, "--json");
    int no_stream = args_flag(&a, "--no-stream");
    long disconnect_after = args_int(&a, "--disconnect-after", -1, 0, 1L << 30);
    int load = args_flag(&a, "--load");
    load_opts lo = {addr, token_file, args_str(&a, "--json-out", NULL), args_num(&a, "--rate", 0, 0, 1e9),
                    (int)args_int(&a, "--requests", 16, 1, 100000), (int)args_int(&a, "--input-len", 32, 1, 1 << 24),
                    (int)args_int(&a, "--output-len", 32, 1, 1 << 24), (int)args_int(&a, "--vocab", 150000, 1, 1 << 30),
                    (uint64_t)args_int(&a, "--seed", 0, 0, 2147483647L)};
    const char **stop = NULL;
    int n_stop = args_strs(&a, "--stop", &stop);
    int n_modes = !!prompt + !!prompt_file + !!chat + !!ids_s + stats + health + !!cancel + load;
    if (!a.failed && n_modes != 1)
        snprintf(a.err, sizeof a.err,
                 "give one of --prompt, --prompt-file, --chat, --ids, --stats, --health, --cancel, --load"),
            a.failed = 1;
    if (!a.failed && image && !chat && !ids_s)
        snprintf(a.err, sizeof a.err, "--image goes with --chat or --ids"), a.failed = 1;
    if (args_finish(&a)) {
        fprintf(stderr, "glmtp-client: %s (glmtp-client --help lists the options)\n", a.err);
        args_free(&a);
        free(stop);
        return 2;
    }
    args_free(&a);
    if (load) {
        free(stop);
        return client_load(&lo);
    }

    char *file_text = NULL; /* read before connecting: a missing file is a usage error */
    if (prompt_file && !(file_text = read_all(prompt_file))) {
        free(stop);
        return 2;
    }
    if (file_text) prompt = file_text;
    uint8_t *image_bytes = NULL;
    size_t image_len = 0;
    if (image && !(image_bytes = read_image(image, &image_len))) {
        free(stop);
        free(file_text);
        return 2;
    }
    char err[512];
    int fd = wire_connect(addr, err, sizeof err);
    if (fd < 0 || client_auth(fd, token_file, err, sizeof err)) {
        fprintf(stderr, "glmtp-client: %s\n", err);
        if (fd >= 0) close(fd);
        free(stop);
        free(file_text);
        free(image_bytes);
        return 2;
    }
    Glmtp__ClientMessage cm = GLMTP__CLIENT_MESSAGE__INIT;
    Glmtp__Stats st = GLMTP__STATS__INIT;
    Glmtp__Health he = GLMTP__HEALTH__INIT;
    Glmtp__Cancel ca = GLMTP__CANCEL__INIT;
    Glmtp__GenerateRequest g = GLMTP__GENERATE_REQUEST__INIT;
    Glmtp__TokenIds ti = GLMTP__TOKEN_IDS__INIT;
    Glmtp__ChatMessages chm = GLMTP__CHAT_MESSAGES__INIT;
    cJSON *chat_json = NULL, *rec = NULL, *out_ids = NULL;
    int *ids = NULL, n_ids = 0, *sids = NULL, n_sids = 0, rc = 2;
    char *text = NULL;
    if (stats) cm.msg_case = GLMTP__CLIENT_MESSAGE__MSG_STATS, cm.stats = &st;
    else if (health) cm.msg_case = GLMTP__CLIENT_MESSAGE__MSG_HEALTH, cm.health = &he;
    else if (cancel) ca.request_id = (char *)cancel, cm.msg_case = GLMTP__CLIENT_MESSAGE__MSG_CANCEL, cm.cancel = &ca;
    else {
        g.request_id = (char *)rid;
        if (prompt) g.input_case = GLMTP__GENERATE_REQUEST__INPUT_TEXT, g.text = (char *)prompt;
        else if (chat) {
            if (load_chat(chat, &chm, &chat_json, image != NULL)) goto done;
            g.input_case = GLMTP__GENERATE_REQUEST__INPUT_CHAT, g.chat = &chm;
        } else {
            if (parse_ids("--ids", ids_s, &ids, &n_ids)) goto done;
            ti.ids = ids, ti.n_ids = (size_t)n_ids;
            g.input_case = GLMTP__GENERATE_REQUEST__INPUT_TOKEN_IDS, g.token_ids = &ti;
        }
        if (image_bytes) g.has_image = 1, g.image.data = image_bytes, g.image.len = image_len;
        if (temp) g.has_temperature = 1, g.temperature = strtof(temp, NULL);
        if (top_p) g.has_top_p = 1, g.top_p = strtof(top_p, NULL);
        if (top_k) g.has_top_k = 1, g.top_k = atoi(top_k);
        if (seed) g.has_seed = 1, g.seed = strtoull(seed, NULL, 10);
        if (max_new) g.has_max_new_tokens = 1, g.max_new_tokens = atoi(max_new);
        if (n_stop) g.stop = (char **)stop, g.n_stop = (size_t)n_stop;
        if (stop_ids_s) {
            if (parse_ids("--stop-ids", stop_ids_s, &sids, &n_sids)) goto done;
            g.stop_ids = sids, g.n_stop_ids = (size_t)n_sids;
        }
        g.has_stream = 1, g.stream = !no_stream;
        cm.msg_case = GLMTP__CLIENT_MESSAGE__MSG_GENERATE, cm.generate = &g;
    }
    double t0 = now_s(), ttft = -1;
    if (send_msg(fd, &cm)) goto done;
    long n_deltas = 0;
    rec = cJSON_CreateObject(), out_ids = cJSON_CreateArray();
    size_t tcap = 1024, tlen = 0;
    text = malloc(tcap);
    if (!text) abort();
    text[0] = 0;
    for (;;) {
        Glmtp__ServerMessage *m = recv_msg(fd);
        if (!m) break;
        int done = 1;
        if (m->msg_case == GLMTP__SERVER_MESSAGE__MSG_STATS) {
            print_stats(m->stats);
            rc = 0;
        } else if (m->msg_case == GLMTP__SERVER_MESSAGE__MSG_HEALTH) {
            printf("%s\n", m->health->state ? m->health->state : "?");
            rc = m->health->ok ? 0 : 1;
        } else if (m->msg_case == GLMTP__SERVER_MESSAGE__MSG_CANCEL) {
            printf("cancel %s: %s\n", m->cancel->request_id, m->cancel->found ? "found" : "not found");
            rc = m->cancel->found ? 0 : 1;
        } else if (m->msg_case == GLMTP__SERVER_MESSAGE__MSG_ERROR) {
            fprintf(stderr, "glmtp-client: server error %d: %s\n", m->error->code, m->error->message);
            cJSON_AddStringToObject(rec, "error", m->error->message ? m->error->message : "");
            rc = 1;
        } else if (m->msg_case == GLMTP__SERVER_MESSAGE__MSG_RESPONSE) {
            Glmtp__GenerateResponse *r = m->response;
            const char *piece = NULL;
            int32_t *pid = NULL;
            size_t np = 0;
            if (r->body_case == GLMTP__GENERATE_RESPONSE__BODY_PROGRESS) {
                show_progress(r->progress, !no_progress && isatty(2), json ? rec : NULL);
                glmtp__server_message__free_unpacked(m, NULL);
                continue;
            }
            if (r->body_case == GLMTP__GENERATE_RESPONSE__BODY_DELTA) {
                piece = r->delta->text, pid = r->delta->token_ids, np = r->delta->n_token_ids;
                done = 0;
                n_deltas++;
            } else if (r->body_case == GLMTP__GENERATE_RESPONSE__BODY_FINAL) {
                piece = r->final->text, pid = r->final->token_ids, np = r->final->n_token_ids;
                cJSON_AddStringToObject(rec, "finish_reason", r->final->finish_reason ? r->final->finish_reason : "");
                cJSON *u = cJSON_AddObjectToObject(rec, "usage");
                if (r->final->usage) {
                    cJSON_AddNumberToObject(u, "prompt_tokens", r->final->usage->prompt_tokens);
                    cJSON_AddNumberToObject(u, "completion_tokens", r->final->usage->completion_tokens);
                    if (r->final->usage->has_cached_tokens)
                        cJSON_AddNumberToObject(u, "cached_tokens", r->final->usage->cached_tokens);
                }
                rc = 0;
            } else {
                const char *msg = r->body_case == GLMTP__GENERATE_RESPONSE__BODY_ERROR && r->error->message
                                      ? r->error->message : "response with no body";
                if (strncmp(msg, "request '", 9) == 0) /* the server's message names the request */
                    fprintf(stderr, "glmtp-client: %s\n", msg);
                else
                    fprintf(stderr, "glmtp-client: request '%s': %s\n", r->request_id, msg);
                cJSON_AddStringToObject(rec, "error", msg);
                if (r->body_case == GLMTP__GENERATE_RESPONSE__BODY_ERROR)
                    cJSON_AddNumberToObject(rec, "error_code", r->error->code);
                rc = 1;
            }
            if (np && ttft < 0) ttft = now_s() - t0;
            for (size_t i = 0; i < np; i++) cJSON_AddItemToArray(out_ids, cJSON_CreateNumber(pid[i]));
            if (piece && *piece) {
                size_t k = strlen(piece);
                if (tlen + k + 1 > tcap) {
                    while (tlen + k + 1 > tcap) tcap *= 2;
                    text = realloc(text, tcap);
                    if (!text) abort();
                }
                memcpy(text + tlen, piece, k + 1);
                tlen += k;
                if (!json) fputs(piece, stdout), fflush(stdout);
            }
            if (!done && disconnect_after >= 0 && n_deltas >= disconnect_after) {
                glmtp__server_message__free_unpacked(m, NULL);
                close(fd);
                fd = -1;
                rc = 0;
                cJSON_AddStringToObject(rec, "finish_reason", "disconnected");
                break;
            }
        } else {
            fprintf(stderr, "glmtp-client: unknown reply from the server\n");
            rc = 2;
        }
        glmtp__server_message__free_unpacked(m, NULL);
        if (done) break;
    }
    double total = now_s() - t0;
    if (cm.msg_case == GLMTP__CLIENT_MESSAGE__MSG_GENERATE) {
        if (json) {
            cJSON_AddStringToObject(rec, "id", rid);
            cJSON_AddStringToObject(rec, "text", text);
            cJSON_AddItemToObject(rec, "token_ids", out_ids);
            out_ids = NULL;
            cJSON_AddNumberToObject(rec, "ttft_ms", ttft * 1e3);
            cJSON_AddNumberToObject(rec, "total_ms", total * 1e3);
            cJSON_AddNumberToObject(rec, "deltas", (double)n_deltas);
            char *s = cJSON_PrintUnformatted(rec);
            printf("%s\n", s);
            free(s);
        } else if (tlen) {
            printf("\n");
        }
    }
done:
    cJSON_Delete(out_ids);
    cJSON_Delete(rec);
    cJSON_Delete(chat_json);
    free(text);
    free(file_text);
    free(image_bytes);
    free(ids);
    free(sids);
    free(stop);
    if (chm.messages) {
        for (size_t i = 0; i < chm.n_messages; i++) free(chm.messages[i]);
        free(chm.messages);
    }
    if (fd >= 0) close(fd);
    return rc;
}
