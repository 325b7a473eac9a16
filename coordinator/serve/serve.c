/* glmtp serve: the protobuf socket server (see serve.h for its parts).
 * Every rank loads its shard; rank 0 also listens, runs the network thread and
 * drives the steps; the other ranks follow. SIGTERM/SIGINT: the handler writes
 * a byte to a pipe; the network thread stops accepting, the scheduler answers
 * every request left with finish_reason "shutdown", then all ranks exit 0. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../proto/wire.h"
#include "../../worker/util.h"
#include "../../worker/log.h"
#include "../base/args.h"
#include "../base/commands.h"
#include "../engine/capacity.h"
#include "../engine/kvstore.h"
#include "../text/chat_template.h"
#include "serve.h"
#ifdef GLMTP_HAVE_HTTP
#include "../http/http.h"
#endif

/* The handler's only way out: the write end of the server's signal pipe. */
static int sig_fd = -1;

static void on_signal(int sig) {
    (void)sig;
    int saved = errno;
    if (sig_fd >= 0 && write(sig_fd, "s", 1) < 0) {
    }
    errno = saved;
}

static int nonblocking_pipe(int p[2], char *err, size_t errlen) {
    if (pipe(p) < 0) {
        snprintf(err, errlen, "serve: pipe: %s", strerror(errno));
        return -1;
    }
    for (int i = 0; i < 2; i++) {
        int fl = fcntl(p[i], F_GETFL);
        if (fl < 0 || fcntl(p[i], F_SETFL, fl | O_NONBLOCK) < 0) {
            snprintf(err, errlen, "serve: fcntl on a pipe: %s", strerror(errno));
            return -1;
        }
    }
    return 0;
}

typedef struct serve_cli {
    const char *dir, *listen, *token_file, *tok_path, *device, *comm_kind, *step_log;
    const char *snap_dir; /* --kv-snapshot-dir */
    const char *http, *api_key_file, *model_name; /* the OpenAI HTTP front */
    long max_request_bytes;
    int threads, block_size, step_tokens, kv_tokens, max_queue, keepalive, no_prefix_cache, max_model_len, progress_ms;
    double mem_util, auth_timeout, stall_s;
    int kv_dtype; /* --kv-cache-dtype */
    long max_frame;
    req_defaults d;
} serve_cli;

static const args_opt serve_opts[] = {
    {"--model", "DIR", "checkpoint directory; required"},
    {"--listen", "ADDR", "127.0.0.1:7070 (default), HOST:PORT or unix:/path; beyond loopback needs --auth-token-file"},
    {"--auth-token-file", "F", "clients must send the token in this file first"},
    {"--auth-timeout", "S", "with a token: seconds a connection may take to authenticate (default 10; at most 32 wait "
                            "at once)"},
    {"--tokenizer", "FILE", "tokenizer.model to use instead of the one in DIR"},
    {"--step-log", "FILE", "one JSON line per engine step (batch, tokens, times)"},
    {"--max-new-tokens", "N", "default new tokens per request (default: generation_config.json, else 256; at most the room left in the context)"},
    {"--temperature", "T", "sampling temperature, 0 = greedy (default: generation_config.json, else greedy)"},
    {"--top-p", "P", "nucleus sampling (default: generation_config.json, else 1)"},
    {"--top-k", "K", "top-k sampling, 0 = off (default: generation_config.json, else 0)"},
    {"--seed", "S", "base seed of sampled requests (default 0)"},
    {"--step-tokens", "N", "tokens per step, prefill chunks included (default 512)"},
    {"--max-queue", "N", "requests waiting beyond the running ones before \"overloaded\" (default 256)"},
    {"--max-frame", "BYTES", "largest message a client may send (default 16 MiB)"},
    {"--keepalive", "S", "seconds between idle keepalive steps to the other ranks (default 30, or a third of the "
                         "collective timeout when that is shorter; must be below it)"},
    {"--collective-timeout", "S", "a rank that waits longer than S seconds for its peers in a collective (a dead or "
                                  "stopped rank) ends the whole job, naming itself (default 60 for serve; "
                                  "precedence: this option, then GLMTP_COMM_TIMEOUT, then 60)"},
    {"--stall-seconds", "S", "Health answers \"stalled\" (ok false; HTTP /health 503) while a step or keepalive has "
                             "run longer than S seconds: work pending and no step finished (default 10)"},
    {"--no-prefix-cache", NULL, "do not reuse the KV blocks of a prompt prefix seen before"},
    {"--kv-snapshot-dir", "DIR", "KV snapshots of prefixes on disk: requests with keep_prefix save theirs there; at start-up and on a cache miss they are loaded instead of recomputed"},
    {"--max-model-len", "N", "longest request (prompt + new tokens; default: the model's seq_length); must fit the KV pool, else an error at start-up (by default: a warning, and the pool's tokens)"},
    {"--progress-ms", "MS", "Progress messages of a streamed prompt longer than --step-tokens at most this often (default 500; 0: every chunk)"},
    {"--http", "HOST:PORT", "also serve the OpenAI-compatible HTTP API there (e.g. 127.0.0.1:8000); beyond loopback needs --api-key-file"},
    {"--api-key-file", "F", "HTTP clients must send 'Authorization: Bearer KEY' with the key in this file (on /v1/*, /tokenize, /detokenize)"},
    {"--served-model-name", "NAME", "the model's name in the HTTP API (default: the model directory's name)"},
    {"--max-request-bytes", "N", "largest HTTP request body (default 32 MiB; beyond: 413)"},
    {NULL, NULL, NULL},
};

const args_spec cmd_serve_spec = {
    "glmtp serve",
    "--model DIR [--listen 127.0.0.1:7070|unix:/path] [options]",
    "Serving over the protobuf channel (proto/glmtp.proto, installed in share/glmtp/): continuous batching,\n"
    "chunked prefill, preemption, bounded queue, cancel, Health/Stats. Client: glmtp-client --help.",
    {serve_opts, args_engine_opts, args_log_opts, NULL},
    NULL,
};

static int parse_cli(comm *c, serve_cli *o, int argc, char **argv) {
    args a;
    /* every rank parses the same argv; rank 0 reports */
    args_init(&a, &cmd_serve_spec, argc, argv);
    memset(o, 0, sizeof *o);
    o->dir = args_str(&a, "--model", NULL);
    req_defaults_load(&o->d, o->dir ? o->dir : ".");
    o->listen = args_str(&a, "--listen", "127.0.0.1:7070");
    o->token_file = args_str(&a, "--auth-token-file", NULL);
    o->tok_path = args_str(&a, "--tokenizer", NULL);
    o->step_log = args_str(&a, "--step-log", NULL);
    o->d.max_new = (int)args_int(&a, "--max-new-tokens", o->d.max_new, 1, 1 << 30);
    o->d.temperature = (float)args_num(&a, "--temperature", o->d.temperature, 0.0, 1e4);
    o->d.top_p = (float)args_num(&a, "--top-p", o->d.top_p, 1e-9, 1.0);
    o->d.top_k = (int)args_int(&a, "--top-k", o->d.top_k, 0, 1 << 30);
    o->d.seed = (uint64_t)args_int(&a, "--seed", 0, 0, 2147483647L);
    o->threads = (int)args_int(&a, "--threads", 0, 0, 1024);
    o->device = args_str(&a, "--device", "cpu");
    o->comm_kind = args_str(&a, "--comm", NULL);
    o->block_size = (int)args_int(&a, "--block-size", 16, 1, 1 << 20);
    o->step_tokens = (int)args_int(&a, "--step-tokens", 512, 1, 1 << 24);
    o->kv_tokens = (int)args_int(&a, "--kv-tokens", 0, 0, 1 << 30); /* 0: from GPU memory (65536 on CPU) */
    o->mem_util = args_num(&a, "--gpu-memory-utilization", ENGINE_GPU_MEM_UTIL, 0.01, 1.0);
    o->kv_dtype = args_kv_dtype(&a);
    o->max_queue = (int)args_int(&a, "--max-queue", 256, 1, 1 << 20);
    o->max_frame = args_int(&a, "--max-frame", WIRE_MAX_FRAME_DEFAULT, 64, 1L << 30);
    /* applied before the comm was made (cli/main.c); read here so that it is known and checked */
    (void)args_num(&a, "--collective-timeout", c->timeout_s, 1e-3, 1e7);
    long keep_default = c->timeout_s >= 90 ? 30 : (long)(c->timeout_s / 3);
    o->keepalive = (int)args_int(&a, "--keepalive", keep_default < 1 ? 1 : keep_default, 1, 3600);
    o->stall_s = args_num(&a, "--stall-seconds", 10.0, 0.01, 1e7);
    o->auth_timeout = args_num(&a, "--auth-timeout", 10.0, 0.01, 3600.0);
    o->no_prefix_cache = args_flag(&a, "--no-prefix-cache");
    o->snap_dir = args_str(&a, "--kv-snapshot-dir", NULL);
    o->max_model_len = (int)args_int(&a, "--max-model-len", 0, 1, 1 << 30);
    o->progress_ms = (int)args_int(&a, "--progress-ms", 500, 0, 3600000);
    o->http = args_str(&a, "--http", NULL);
    o->api_key_file = args_str(&a, "--api-key-file", NULL);
    o->model_name = args_str(&a, "--served-model-name", NULL);
    o->max_request_bytes = args_int(&a, "--max-request-bytes", 32L << 20, 64, 1L << 31);
    int rc = 0;
    if (!a.failed && !o->dir) snprintf(a.err, sizeof a.err, "--model DIR is required"), a.failed = 1;
    if (!a.failed && o->keepalive >= c->timeout_s)
        snprintf(a.err, sizeof a.err, "--keepalive %d must be below the collective timeout (%.3g s): idle followers "
                 "would time out; raise --collective-timeout", o->keepalive, c->timeout_s), a.failed = 1;
    if (args_finish(&a)) {
        log_error_agreed("serve: %s (glmtp serve --help lists the options)", a.err);
        rc = 1;
    }
    args_free(&a);
    return rc;
}

/* The token from the file of option opt, trailing whitespace dropped. NULL and err on failure. */
static char *read_token(const char *opt, const char *path, char *err, size_t errlen) {
    size_t len;
    char e2[512];
    char *t = util_read_file(path, &len, e2, sizeof e2);
    if (!t) {
        snprintf(err, errlen, "serve: %s: %s", opt, e2);
        return NULL;
    }
    while (len && (t[len - 1] == '\n' || t[len - 1] == '\r' || t[len - 1] == ' ')) t[--len] = 0;
    if (len == 0 || strlen(t) != len) {
        snprintf(err, errlen, "serve: %s %s: empty, or holds a NUL byte", opt, path);
        free(t);
        return NULL;
    }
    return t;
}

/* Checks the HTTP options before the model loads: the build has them, the
 * address and key agree; fills name (--served-model-name or the directory's). */
static int http_check(const serve_cli *o, const char *api_key, char *name, size_t cap, char *err, size_t errlen) {
    const char *d = o->dir;
    size_t n = strlen(d);
    while (n > 1 && d[n - 1] == '/') n--;
    const char *base = d + n;
    while (base > d && base[-1] != '/') base--;
    snprintf(name, cap, "%.*s", (int)(d + n - base), base);
    if (o->model_name) snprintf(name, cap, "%s", o->model_name);
    if (!o->http) return 0;
    if (strpbrk(name, "\"\\\n") || !name[0]) {
        snprintf(err, errlen, "serve: --served-model-name '%s': must be non-empty, without quotes, backslashes or "
                 "newlines", name);
        return -1;
    }
#ifdef GLMTP_HAVE_HTTP
    int lo = http_addr_is_loopback(o->http);
    if (lo < 0) {
        snprintf(err, errlen, "serve: --http %s: expected HOST:PORT (e.g. 127.0.0.1:8000)", o->http);
        return -1;
    }
    if (!lo && !api_key) {
        snprintf(err, errlen, "serve: --http %s is not a loopback address: give --api-key-file FILE", o->http);
        return -1;
    }
    return 0;
#else
    (void)api_key;
    snprintf(err, errlen, "serve: --http: this glmtp was built without libmicrohttpd (apt-get install "
             "libmicrohttpd-dev, then cmake again)");
    return -1;
#endif
}

int cmd_serve(comm *c, int argc, char **argv) {
    if (engine_check_args(c, argc, argv)) return 1;
    serve_cli o;
    if (parse_cli(c, &o, argc, argv)) return 1;
    server s;
    memset(&s, 0, sizeof s);
    s.listen_fd = -1, s.wake[0] = s.wake[1] = s.sig[0] = s.sig[1] = -1;
    tokenizer *tok = NULL;
    char *preamble = NULL, *api_key = NULL, err[2048] = "", model_name[256] = "";
    glm_config cfg;
    int failed = 0;
    if (c->rank == 0) {
        char path[4096];
        snprintf(path, sizeof path, "%s/tokenizer.model", o.dir);
        const char *tp = o.tok_path ? o.tok_path : path;
        if (config_load(&cfg, o.dir, err, sizeof err)) failed = 1;
        else if ((o.tok_path || access(tp, F_OK) == 0) && tok_load(&tok, tp, err, sizeof err)) failed = 1;
        else if (o.token_file && !(s.token = read_token("--auth-token-file", o.token_file, err, sizeof err))) failed = 1;
        else if (o.api_key_file && !(api_key = read_token("--api-key-file", o.api_key_file, err, sizeof err)))
            failed = 1;
        else if (http_check(&o, api_key, model_name, sizeof model_name, err, sizeof err)) failed = 1;
        else if ((s.listen_fd = wire_listen(o.listen, &s.loopback, err, sizeof err)) < 0) failed = 1;
        else if (!s.loopback && !s.token) {
            snprintf(err, sizeof err, "serve: --listen %s is not a loopback address: give --auth-token-file FILE", o.listen);
            failed = 1;
        } else if (nonblocking_pipe(s.wake, err, sizeof err) || nonblocking_pipe(s.sig, err, sizeof err))
            failed = 1;
        else if (o.step_log && !(s.step_log = fopen(o.step_log, "w"))) {
            snprintf(err, sizeof err, "serve: --step-log %s: %s", o.step_log, strerror(errno));
            failed = 1;
        }
        if (failed) engine_error(c, "%s", err);
        sig_fd = s.sig[1];
    }
    /* Every rank: a TERM forwarded by mpirun must not kill the followers; rank 0 ends them. */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGTERM, &sa, NULL) < 0 || sigaction(SIGINT, &sa, NULL) < 0 || signal(SIGPIPE, SIG_IGN) == SIG_ERR) {
        engine_error(c, "serve: sigaction: %s", strerror(errno));
        failed = 1;
    }
    int rc = 1;
    engine e = {0};
    if (comm_first_failed(c, failed) >= 0) goto done;
    if (engine_open(&e, c, o.dir, o.kv_tokens, o.block_size, o.threads, o.device, o.comm_kind, o.mem_util,
                    o.kv_dtype))
        goto done;
    int max_len = engine_max_model_len(&e, o.max_model_len, "serve"); /* same verdict on every rank */
    if (max_len < 0) goto done;
    if (c->rank != 0) {
        engine_follow(&e);
        rc = 0;
        goto done;
    }
    pcache_set_enabled(e.pc, !o.no_prefix_cache);
    if (o.snap_dir && !(e.snap = kvstore_open(&e, o.snap_dir))) {
        engine_finish(&e);
        goto done;
    }
    preamble = chat_tool_preamble(o.dir);
    req_context ctx = {&o.d, tok, preamble, max_len, tok ? tok_n_total(tok) : cfg.vocab,
                       max_len < cfg.seq_len ? cfg.seq_len : 0, &cfg, 0};
    if (ctx.n_vocab > cfg.vocab) ctx.n_vocab = cfg.vocab;
    s.max_frame = (uint32_t)o.max_frame, s.max_queue = o.max_queue, s.auth_timeout = o.auth_timeout;
    s.stall_s = o.stall_s, s.ctx = &ctx;
    if (pthread_mutex_init(&s.mu, NULL) || pthread_cond_init(&s.cv, NULL)) {
        engine_error(c, "serve: pthread_mutex_init/pthread_cond_init failed");
        engine_finish(&e);
        goto done;
    }
#ifdef GLMTP_HAVE_HTTP
    http_server *hs = NULL;
    if (o.http) {
        http_options ho = {o.http, api_key, model_name, (size_t)o.max_request_bytes, max_len};
        if (!(hs = http_start(&s, &ctx, &ho, err, sizeof err))) {
            engine_error(c, "%s", err);
            engine_finish(&e);
            goto done;
        }
        fprintf(stderr, "glmtp: serve: OpenAI API on http://%s/v1 (model '%s')\n", o.http, model_name);
    }
#endif
    pthread_t th;
    int pe = pthread_create(&th, NULL, srv_net_main, &s);
    if (pe) {
        engine_error(c, "serve: pthread_create of the network thread: %s", strerror(pe));
#ifdef GLMTP_HAVE_HTTP
        http_stop(hs);
#endif
        engine_finish(&e);
        goto done;
    }
    fprintf(stderr, "glmtp: serve: listening on %s (pid %d, %d ranks, %d KV blocks of %d, prefix cache %s, max model "
            "len %d, collective timeout %.3g s, stalled after %.3g s)\n", o.listen, (int)getpid(), c->size,
            e.blocks.n_blocks, e.blocks.block_size, o.no_prefix_cache ? "off" : "on", max_len, c->timeout_s, o.stall_s);
    srv_sched_options so = {o.step_tokens, o.keepalive, o.progress_ms};
    srv_sched_run(&s, &e, tok, &ctx, &so);
    pthread_join(th, NULL);
#ifdef GLMTP_HAVE_HTTP
    http_stop(hs);
#endif
    engine_finish(&e);
    fprintf(stderr, "glmtp: serve: stopped\n");
    rc = 0;
done:
    if (c->rank == 0 && !failed && strncmp(o.listen, "unix:", 5) == 0) unlink(o.listen + 5);
    if (s.listen_fd >= 0) close(s.listen_fd);
    if (s.step_log) fclose(s.step_log);
    free(s.token);
    free(api_key);
    free(preamble);
    tok_free(tok);
    kvstore_close(e.snap);
    engine_close(&e);
    return rc;
}
