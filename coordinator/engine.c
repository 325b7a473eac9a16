#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../worker/util.h"
#include "engine.h"

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

int engine_open(engine *e, comm *c, const char *dir, int kv_tokens, int block_size, int threads) {
    memset(e, 0, sizeof *e);
    e->comm = c;
    e->kb = kernels_cpu_create(threads);
    char err[2048] = "";
    int rc = model_load(&e->m, dir, e->kb, c, err, sizeof err);
    int first = comm_first_failed(c, rc != 0);
    if (first >= 0) share_error(c, first, err, sizeof err);
    if (rc) {
        engine_error(c, "%s", err);
    } else if (first >= 0) {
        engine_error(c, "stopping: rank %d failed to load the model: %s", first, err);
    }
    if (first >= 0) {
        engine_close(e);
        return 1;
    }
    int bad = comm_first_mismatch(c, config_hash(&e->m->cfg));
    if (bad >= 0) {
        engine_error(c, "rank %d loaded a different model configuration than rank 0", bad);
        engine_close(e);
        return 1;
    }
    int n_blocks = (kv_tokens + block_size - 1) / block_size;
    e->kv = kv_create(e->m, n_blocks, block_size);
    e->fw = forward_create(e->m, e->kv);
    /* Agreed on, or the other ranks would wait in the first step for rank 0. */
    int oom = c->rank == 0 && kv_blocks_init(&e->blocks, n_blocks, block_size);
    if (comm_first_failed(c, oom) >= 0) {
        engine_error(c, "%s", c->rank == 0 ? "out of memory for the KV block pool"
                                           : "stopping: rank 0 is out of memory for the KV block pool");
        engine_close(e);
        return 1;
    }
    fprintf(stderr, "glmtp: rank %d/%d: weights %zu bytes (sharded %zu, replicated %zu); KV cache %zu bytes, %d tokens\n",
            c->rank, c->size, e->m->bytes_sharded + e->m->bytes_replicated, e->m->bytes_sharded,
            e->m->bytes_replicated, e->kv->bytes, n_blocks * block_size);
    return 0;
}

void engine_close(engine *e) {
    if (e->comm && e->comm->rank == 0) kv_blocks_free(&e->blocks);
    forward_free(e->fw);
    if (e->m) kv_free(e->m, e->kv);
    model_free(e->m);
    if (e->kb.iface) e->kb.iface->destroy(e->kb.ctx);
    memset(e, 0, sizeof *e);
}

void engine_step(engine *e, glm_step *s, float *logits, float *hidden) {
    step_bcast(e->comm, s);
    forward_run(e->fw, s, logits, hidden);
}

/* An empty step is the end-of-work message. */
void engine_finish(engine *e) {
    glm_step s = {0};
    step_bcast(e->comm, &s);
}

void engine_follow(engine *e) {
    for (;;) {
        glm_step s = {0};
        step_bcast(e->comm, &s);
        if (s.n_tokens == 0) {
            step_free(&s);
            return;
        }
        forward_run(e->fw, &s, NULL, NULL);
        step_free(&s);
    }
}
