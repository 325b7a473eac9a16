#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../worker/kvsnap.h"
#include "../../worker/log.h"
#include "../../worker/util.h"
#include "../../worker/vision.h"
#include "engine.h"
#ifdef GLMTP_HAVE_NCCL
#include "../../comm/comm_nccl.h"
#endif

void engine_error(const comm *c, const char *fmt, ...) {
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (c && c->size > 1)
        fprintf(stderr, "glmtp: rank %d: %s\n", c->rank, msg);
    else
        fprintf(stderr, "glmtp: %s\n", msg);
}

int engine_check_args(comm *c, int argc, char **argv) {
    uint64_t h = UTIL_FNV_INIT;
    for (int i = 0; i < argc; i++) h = util_fnv(h, argv[i], strlen(argv[i]) + 1);
    int bad = comm_first_mismatch(c, h);
    if (bad >= 0) {
        engine_error(c, "rank %d was started with different arguments than rank 0", bad);
        return 1;
    }
    return 0;
}

/* Rank `first`'s message, copied into msg on every rank (collective): the ranks
 * that did not fail print why the job stops, not only that it does. */
static void share_error(comm *c, int first, char *msg, size_t len) {
    size_t *bytes = malloc(sizeof *bytes * (size_t)c->size);
    char *all = c->rank == 0 ? malloc(len * (size_t)c->size) : NULL;
    if (!bytes || (c->rank == 0 && !all)) abort();
    for (int r = 0; r < c->size; r++) bytes[r] = len;
    c->iface->gather(c->ctx, msg, all, bytes);
    if (c->rank == 0) memcpy(msg, all + len * (size_t)first, len);
    c->iface->bcast(c->ctx, msg, len);
    msg[len - 1] = 0;
    free(all);
    free(bytes);
}

/* ---- backend factory: the only place that knows which backends exist ---- */

/* This rank's backend, and for GPU ranks the communicator the model's
 * all-reduces go through (*mc; the NCCL one is owned by e). Returns 0, or -1
 * with err. Every rank has the same arguments, so argument errors are the same
 * on every rank; device errors are agreed on by the caller. */
static int open_backend(engine *e, comm *c, const char *device, const char *comm_kind, int threads, char *err,
                        size_t errlen) {
    if (comm_kind && strcmp(comm_kind, "mpi") != 0 && strcmp(comm_kind, "nccl") != 0) {
        snprintf(err, errlen, "unknown --comm '%s' (mpi or nccl)", comm_kind);
        return -1;
    }
    if (!device || strcmp(device, "cpu") == 0) {
        if (comm_kind && strcmp(comm_kind, "nccl") == 0) {
            snprintf(err, errlen, "--comm nccl needs --device cuda");
            return -1;
        }
        e->kb = kernels_cpu_create(threads);
        return 0;
    }
    if (strcmp(device, "cuda") != 0) {
        snprintf(err, errlen, "unknown --device '%s' (cpu or cuda)", device);
        return -1;
    }
#ifdef GLMTP_HAVE_CUDA
    e->kb = kernels_cuda_create(c->local_rank, err, errlen);
    return e->kb.iface ? 0 : -1;
#else
    (void)c, (void)threads;
    snprintf(err, errlen, "--device cuda: this glmtp was built without CUDA (configure with -DGLMTP_CUDA=ON)");
    return -1;
#endif
}

/* Collective, after every rank has its backend. GPU ranks all-reduce device
 * buffers: through NCCL on the backend's stream, or (--comm mpi, one rank, or
 * no NCCL in this build) through MPI with host staging. */
static int open_comm(engine *e, comm *c, const char *device, const char *comm_kind, comm **mc, char *err,
                     size_t errlen) {
    *mc = c;
    if (!device || strcmp(device, "cuda") != 0) return 0;
    int want_nccl = c->size > 1 && !(comm_kind && strcmp(comm_kind, "mpi") == 0);
#ifdef GLMTP_HAVE_NCCL
    if (want_nccl) {
        e->nccl = comm_nccl_create(c, kernels_cuda_stream(e->kb), err, errlen);
        if (!e->nccl) return -1;
        *mc = e->nccl;
        return 0;
    }
#else
    if (want_nccl && comm_kind) { /* asked for by name: say why not */
        snprintf(err, errlen, "--comm nccl: this glmtp was built without NCCL (-DGLMTP_NCCL=OFF)");
        return -1;
    }
#endif
    (void)want_nccl, (void)err, (void)errlen;
    comm_set_device_copy(c, e->kb.iface->to_host, e->kb.iface->to_device, e->kb.ctx);
    return 0;
}

/* Undoes open_comm and open_backend (the NCCL comm first: it uses the
 * backend's stream; the MPI comm's staging hook before the backend behind it). */
static void close_backend(engine *e) {
#ifdef GLMTP_HAVE_NCCL
    comm_nccl_destroy(e->nccl);
#endif
    e->nccl = NULL;
    if (e->comm) comm_set_device_copy(e->comm, NULL, NULL, NULL);
    if (e->kb.iface) e->kb.iface->destroy(e->kb.ctx);
    e->kb.iface = NULL;
}

/* ---- end of the backend factory ---- */

/* Agreement on a step that may fail on some ranks: 0 when every rank is fine,
 * else 1 after the first failing rank's message is printed: by rank 0 alone
 * when every rank failed the same way (a config error, a missing file), else
 * by every rank, naming itself. */
static int agree(comm *c, int rc, char *err, size_t errlen, const char *what) {
    int first = comm_first_failed(c, rc != 0);
    if (first < 0) return 0;
    int all_failed = comm_first_failed(c, rc == 0) < 0;
    int same = comm_first_mismatch(c, util_fnv(UTIL_FNV_INIT, err, strnlen(err, errlen))) < 0;
    share_error(c, first, err, errlen);
    if (all_failed && same)
        log_error_agreed("%s", err);
    else if (rc)
        engine_error(c, "%s", err);
    else if (first >= 0)
        engine_error(c, "stopping: rank %d failed to %s: %s", first, what, err);
    return first >= 0;
}

/* Bytes of activations a step of this many tokens may need on this rank
 * (forward.c's buffers, logits of every row): what the KV pool leaves free. */
#define ACT_RESERVE_TOKENS 8192
#define DEVICE_SLACK_BYTES (512.0 * 1048576) /* library workspaces, graphs, communicator buffers */

static double activation_bytes(const glm_model *m, int T) {
    const glm_config *c = &m->cfg;
    const glm_shard *s = &m->shard;
    double ld = (double)(s->nq + 2 * s->nkv) * c->head_dim, nf = s->f1 - s->f0;
    double per = 3.0 * c->hidden + ld + (double)s->nq * c->head_dim + 3 * nf;
    return (double)T * per * m->kb.iface->act_bytes + 256.0 * (s->v1 - s->v0) * 4;
}

/* GLM-4V: the scratch the vision tower allocates at the first image (and keeps)
 * plus that image's embedding rows; 0 without a tower. Reserved beside the
 * step's activations, so that a pool sized from memory leaves the tower room
 * for the first image that arrives. */
static double vision_reserve_bytes(const engine *e) {
    const comm *c = e->m->comm;
    return vision_act_bytes(&e->m->cfg, c->size, c->rank, (int)e->kb.iface->act_bytes);
}

/* KV tokens this rank can hold: -1 when the backend has no device memory. */
static long long kv_tokens_fit(const engine *e, double mem_util, double per_token, char *why, size_t len) {
    size_t free_b, total_b;
    if (e->kb.iface->mem_info(e->kb.ctx, &free_b, &total_b) != 0) return -1;
    double used = (double)(total_b - free_b);
    double room = mem_util * (double)total_b - used - activation_bytes(e->m, ACT_RESERVE_TOKENS) -
                  vision_reserve_bytes(e) - DEVICE_SLACK_BYTES;
    long long n = room > 0 ? (long long)(room / per_token) : 0;
    snprintf(why, len, "%.2f GiB in use after the weights, %.2f of %.2f GiB free, --gpu-memory-utilization %.2f",
             used / 1073741824.0, free_b / 1073741824.0, total_b / 1073741824.0, mem_util);
    return n;
}

int engine_open(engine *e, comm *c, const char *dir, int kv_tokens, int block_size, int threads,
                const char *device, const char *comm_kind, double mem_util, int kv_dtype) {
    memset(e, 0, sizeof *e);
    e->comm = c;
    char err[2048] = "";
    comm *mc = c;
    if (agree(c, open_backend(e, c, device, comm_kind, threads, err, sizeof err), err, sizeof err,
              "set up its device") ||
        agree(c, open_comm(e, c, device, comm_kind, &mc, err, sizeof err), err, sizeof err, "set up its communicator") ||
        agree(c, model_load(&e->m, dir, e->kb, mc, err, sizeof err), err, sizeof err, "load the model")) {
        engine_close(e);
        return 1;
    }
    int bad = comm_first_mismatch(c, config_hash(&e->m->cfg));
    if (bad >= 0) {
        engine_error(c, "rank %d loaded a different model configuration than rank 0", bad);
        engine_close(e);
        return 1;
    }
    /* The pool: asked for, or what device memory allows; every rank needs the
     * same block count, so the smallest rank's figure is taken. */
    double per_token = kv_bytes_per_token(e->m, kv_dtype);
    char why[512] = "";
    long long fit = kv_tokens_fit(e, mem_util, per_token, why, sizeof why);
    long long want = kv_tokens > 0 ? kv_tokens : fit >= 0 ? fit : ENGINE_KV_TOKENS_CPU;
    if (want > (1LL << 30)) want = 1LL << 30;
    int short_of = kv_tokens > 0 && fit >= 0 && want > fit; /* asked for more than fits */
    int none = kv_tokens <= 0 && fit >= 0 && want < block_size; /* sized from memory, and none is left */
    if (short_of || none)
        snprintf(err, sizeof err, "%s: the KV cache %s (%.0f KiB per token on this rank; %s)", dir,
                 none ? "has no room in GPU memory after the weights" : "of --kv-tokens does not fit in GPU memory",
                 per_token / 1024, why);
    if (agree(c, short_of || none ? -1 : 0, err, sizeof err, "size its KV cache")) {
        engine_close(e);
        return 1;
    }
    uint64_t *all = malloc(sizeof(uint64_t) * (size_t)c->size);
    if (!all) abort();
    c->iface->allgather_u64(c->ctx, (uint64_t)want, all);
    for (int r = 0; r < c->size; r++)
        if ((long long)all[r] < want) want = (long long)all[r];
    free(all);
    int n_blocks = (int)((want + block_size - 1) / block_size);
    if (kv_tokens <= 0) n_blocks = (int)(want / block_size); /* sized from memory: round down */
    e->kv = kv_create(e->m, n_blocks, block_size, kv_dtype);
    e->fw = forward_create(e->m, e->kv);
    /* Agreed on, or the other ranks would wait in the first step for rank 0. */
    int oom = c->rank == 0 && (kv_blocks_init(&e->blocks, n_blocks, block_size) || !(e->pc = pcache_create(&e->blocks)));
    if (comm_first_failed(c, oom) >= 0) {
        engine_error(c, "%s", c->rank == 0 ? "out of memory for the KV block pool"
                                           : "stopping: rank 0 is out of memory for the KV block pool");
        engine_close(e);
        return 1;
    }
    long long tokens = (long long)n_blocks * block_size;
    int ctx = e->m->cfg.seq_len;
    /* Start-up lines: rank 0's at info level, the others' at debug. */
    if (!log_enabled(LOG_INFO)) return 0;
    const glm_model *m = e->m;
    char vis[96] = "";
    if (m->vision) snprintf(vis, sizeof vis, ", vision weights %zu bytes", m->bytes_vision);
    fprintf(stderr, "glmtp: rank %d/%d: weights %zu bytes (sharded %zu, replicated %zu)%s; KV cache %zu bytes, %lld "
            "tokens\n", c->rank, c->size, m->bytes_sharded + m->bytes_replicated, m->bytes_sharded,
            m->bytes_replicated, vis, e->kv->bytes, tokens);
    /* One write per line: stderr is unbuffered, and under mpirun the ranks'
     * writes interleave, so a line written in pieces can be split by another
     * rank's. */
    char room[160];
    if (tokens >= ctx)
        snprintf(room, sizeof room, "room for %.1f sequences of the full %d-token context", (double)tokens / ctx, ctx);
    else
        snprintf(room, sizeof room, "room for %lld tokens in all (the model's context is %d; --kv-tokens N sets the pool)",
                 tokens, ctx);
    const char *kv_type = kv_dtype == KV_DTYPE_FP8 ? "fp8 e4m3 + scales" : e->kb.iface->act_bytes == 4 ? "fp32" : "bf16";
    char weights[160];
    if (m->vision) /* GLM-4V: the language model's, the vision tower's, and what an image needs when it comes */
        snprintf(weights, sizeof weights, "%.2f GiB of language weights, %.2f GiB of vision weights (+ %.2f GiB of "
                 "vision scratch for an image)", (m->bytes_sharded + m->bytes_replicated) / 1073741824.0,
                 m->bytes_vision / 1073741824.0, vision_reserve_bytes(e) / 1073741824.0);
    else
        snprintf(weights, sizeof weights, "%.2f GiB of weights", (m->bytes_sharded + m->bytes_replicated) / 1073741824.0);
    fprintf(stderr, "glmtp: rank %d/%d: %s, %.2f GiB of %s KV cache (%.1f KiB per token%s%s): %s\n", c->rank, c->size,
            weights, e->kv->bytes / 1073741824.0, kv_type, per_token / 1024, fit >= 0 && kv_tokens <= 0 ? "; " : "",
            fit >= 0 && kv_tokens <= 0 ? why : "", room);
    return 0;
}

void engine_close(engine *e) {
    if (e->comm && e->comm->rank == 0) kv_blocks_free(&e->blocks);
    pcache_free(e->pc);
    e->pc = NULL;
    forward_free(e->fw);
    if (e->m) kv_free(e->m, e->kv);
    model_free(e->m);
    close_backend(e);
    memset(e, 0, sizeof *e);
}

void engine_step(engine *e, glm_step *s, float *logits, float *hidden) {
    s->head = STEP_LOGITS;
    step_bcast(e->comm, s);
    forward_run(e->fw, s, logits, hidden);
}

void engine_step_argmax(engine *e, glm_step *s, int vocab_limit, int *ids) {
    s->head = STEP_ARGMAX;
    s->vocab_limit = vocab_limit;
    step_bcast(e->comm, s);
    forward_run_argmax(e->fw, s, ids);
}

void engine_step_sample(engine *e, glm_step *s, int vocab_limit, const ksample_params *p, int *ids) {
    /* Candidates per row and rank: a row's top_k covers its pick whole; without
     * one, the first KERNELS_TOPK_MAX almost always hold the top-p nucleus or
     * the draw of a trained model (the rest of the row is the rare fallback). */
    int cands = 0;
    for (int i = 0; i < s->n_logits; i++) {
        int want = sampling_is_greedy(&p[i]) ? 1
                   : p[i].top_k > 0 && p[i].top_k < KERNELS_TOPK_MAX ? p[i].top_k : KERNELS_TOPK_MAX;
        if (want > cands) cands = want;
        s->temps[i] = sampling_is_greedy(&p[i]) ? 1.0f : p[i].temperature;
    }
    if (cands <= 1) {
        engine_step_argmax(e, s, vocab_limit, ids);
        return;
    }
    s->head = STEP_SAMPLE;
    s->vocab_limit = vocab_limit;
    s->cands = cands < vocab_limit ? cands : vocab_limit;
    step_bcast(e->comm, s);
    forward_run_sample(e->fw, s, p, ids);
}

/* An empty step is the end-of-work message. */
void engine_finish(engine *e) {
    glm_step s = {0};
    step_bcast(e->comm, &s);
}

/* An empty step with one sequence: followers wait again (an idle server sends
 * it so that their collective timeout does not fire). */
void engine_keepalive(engine *e) {
    glm_step s = {0};
    s.n_seqs = 1;
    step_bcast(e->comm, &s);
}

/* Pixels of one image: every rank's copy of rank 0's. */
static size_t image_floats(const engine *e) {
    const glm_vision_config *v = &e->m->cfg.vision;
    return (size_t)v->in_ch * v->image * v->image;
}

void engine_image(engine *e, int slot, const float *pixels) {
    glm_step s = {0};
    s.head = STEP_IMAGE;
    s.img_slot = slot;
    step_bcast(e->comm, &s);
    e->comm->iface->bcast(e->comm->ctx, (void *)pixels, image_floats(e) * sizeof(float));
    forward_image(e->fw, slot, pixels);
}

void engine_image_drop(engine *e, int slot) {
    glm_step s = {0};
    s.head = STEP_IMAGE_DROP;
    s.img_slot = slot;
    step_bcast(e->comm, &s);
    forward_image_drop(e->fw, slot);
}

void engine_follow(engine *e) {
    for (;;) {
        glm_step s = {0};
        step_bcast(e->comm, &s);
        if (s.head == STEP_KVSNAP) { /* rank 0 saves or loads a KV snapshot */
            step_free(&s);
            kvsnap_follow(e->comm, e->m, e->kv);
            continue;
        }
        if (s.head == STEP_IMAGE || s.head == STEP_IMAGE_DROP) {
            int slot = s.img_slot, enc = s.head == STEP_IMAGE;
            step_free(&s);
            if (enc) {
                float *px = malloc(image_floats(e) * sizeof(float));
                if (!px) abort();
                e->comm->iface->bcast(e->comm->ctx, px, image_floats(e) * sizeof(float));
                forward_image(e->fw, slot, px);
                free(px);
            } else {
                forward_image_drop(e->fw, slot);
            }
            continue;
        }
        if (s.n_tokens == 0) { /* the end, or a keepalive (n_seqs 1) */
            int end = s.n_seqs == 0;
            step_free(&s);
            if (end) return;
            continue;
        }
        if (s.head == STEP_ARGMAX)
            forward_run_argmax(e->fw, &s, NULL);
        else if (s.head == STEP_SAMPLE)
            forward_run_sample(e->fw, &s, NULL, NULL);
        else
            forward_run(e->fw, &s, NULL, NULL);
        step_free(&s);
    }
}
