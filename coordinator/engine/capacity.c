/* --max-model-len against the KV pool (see capacity.h). */
#include "capacity.h"

#include <stdio.h>

#include "../../worker/log.h"

/* bytes as "12.34 GiB", or MiB below one GiB (small test pools). */
static const char *human(char *buf, size_t len, double bytes) {
    if (bytes >= 1073741824.0) snprintf(buf, len, "%.2f GiB", bytes / 1073741824.0);
    else snprintf(buf, len, "%.2f MiB", bytes / 1048576.0);
    return buf;
}

void engine_capacity_message(char *msg, size_t len, long long want, long long pool, double kv_token_bytes, int tp,
                             int kv_groups) {
    char more[200], b1[32], b2[32], b3[32];
    if (tp < kv_groups) /* the KV heads still split: each doubling of tp halves a rank's share */
        snprintf(more, sizeof more, "more ranks (tp %d holds %s of it per rank)", 2 * tp,
                 human(b1, sizeof b1, want * kv_token_bytes / 2));
    else
        snprintf(more, sizeof more, "more ranks do not help (tp %d >= %d KV groups: KV heads are replicated)", tp,
                 kv_groups);
    snprintf(msg, len,
             "a sequence of %lld tokens needs %s of KV cache per rank (%.1f KiB per token, tp %d), but the KV "
             "pool holds %lld tokens (%s per rank). Ways out: %s; --kv-cache-dtype fp8 (about half the bytes); a shorter "
             "--max-model-len (at most %lld here); a larger pool (--kv-tokens, --gpu-memory-utilization, GPUs with "
             "more memory; glmtp bench --model-only --plan %lld says which)",
             want, human(b2, sizeof b2, want * kv_token_bytes), kv_token_bytes / 1024, tp, pool,
             human(b3, sizeof b3, pool * kv_token_bytes), more, pool, want);
}

int engine_max_model_len(const engine *e, int asked, const char *what) {
    int seq = e->m->cfg.seq_len, rank0 = e->comm->rank == 0;
    if (asked > seq) {
        if (rank0)
            log_error_agreed("%s: --max-model-len %d exceeds the model's context length %d (seq_length in "
                             "config.json)", what, asked, seq);
        return -1;
    }
    long long want = asked > 0 ? asked : seq;
    long long pool = (long long)e->kv->n_blocks * e->kv->block_size;
    if (want <= pool) return (int)want;
    /* kv_create allocates one spare block past the pool (kvcache.h) */
    double per_token = (double)e->kv->bytes / ((double)e->kv->n_blocks + 1) / e->kv->block_size;
    char msg[1024];
    engine_capacity_message(msg, sizeof msg, want, pool, per_token, e->comm->size, e->m->cfg.n_kv);
    if (asked > 0) {
        if (rank0) log_error_agreed("%s: --max-model-len %d does not fit: %s", what, asked, msg);
        return -1;
    }
    if (rank0)
        log_msg(LOG_WARN, "%s: the model's context (%d tokens) does not fit: %s. Serving with a maximum model length "
                "of %lld: longer requests are refused at admission", what, seq, msg, pool);
    return (int)pool;
}
