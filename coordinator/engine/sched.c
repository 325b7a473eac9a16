/* Continuous batching (see sched.h). */
#include <stdlib.h>
#include <string.h>

#include "../../worker/util.h"
#include "image_place.h"
#include "kvstore.h"
#include "sched.h"

void sched_init(sched *q, engine *e, const tokenizer *tok, const gen_options *go, const sched_hooks *h) {
    memset(q, 0, sizeof *q);
    q->e = e, q->tok = tok, q->go = *go, q->hooks = *h;
    q->dcap = tok ? 3 * (tok_max_token_len(tok) + 4) : 16;
    q->dbuf = malloc(q->dcap + 1);
    q->blk = malloc(sizeof(int) * (size_t)e->blocks.block_size);
    if (!q->dbuf || !q->blk) abort();
}

void sched_free(sched *q) {
    free(q->run);
    free(q->wait);
    free(q->dbuf);
    free(q->blk);
    free(q->img_refs);
    free(q->img_hash);
    memset(q, 0, sizeof *q);
}

/* ------------------------------------------------------------------ images */

static image_place place_of(const sched *q, const sched_req *r) {
    image_place ip = {r->g->pixels ? r->g->img_kv0 : -1, config_image_tokens(&q->e->m->cfg)};
    return ip;
}

static void image_release(sched *q, sched_req *r) {
    if (r->img_slot < 0) return;
    if (--q->img_refs[r->img_slot] == 0) engine_image_drop(q->e, r->img_slot);
    r->img_slot = -1;
}

/* A slot already holding the image with this content hash, or -1. */
static int image_shared(const sched *q, uint64_t hash) {
    for (int i = 0; hash && i < q->n_img_slots; i++)
        if (q->img_refs[i] > 0 && q->img_hash[i] == hash) return i;
    return -1;
}

/* Encodes r's image into a free slot when this step feeds rows [p0, p0 + n) of
 * it, unless a slot holds the same image already. */
static void image_need(sched *q, sched_req *r, int p0, int n) {
    image_place ip = place_of(q, r);
    if (ip.kv0 < 0 || r->img_slot >= 0 || p0 + n <= ip.kv0 || p0 >= ip.kv0 + ip.per) return;
    int slot = image_shared(q, r->g->content_hash);
    if (slot >= 0) {
        q->img_refs[slot]++;
        r->img_slot = slot;
        q->images_shared++;
        return;
    }
    slot = 0;
    while (slot < q->n_img_slots && q->img_refs[slot]) slot++;
    if (slot == q->n_img_slots) {
        q->img_refs = realloc(q->img_refs, sizeof *q->img_refs * (size_t)(slot + 1));
        q->img_hash = realloc(q->img_hash, sizeof *q->img_hash * (size_t)(slot + 1));
        if (!q->img_refs || !q->img_hash) abort();
        q->n_img_slots++;
    }
    q->img_refs[slot] = 1, q->img_hash[slot] = r->g->content_hash;
    r->img_slot = slot;
    q->images++;
    engine_image(q->e, slot, r->g->pixels);
}

/* Frees r's slot once its prompt is fed past the image. */
static void image_done(sched *q, sched_req *r) {
    image_place ip = place_of(q, r);
    if (r->img_slot >= 0 && r->n_fed >= ip.kv0 + ip.per) image_release(q, r);
}

/* Removes list[i] keeping the order. */
static void remove_at(sched_req **list, int *n, int i) {
    memmove(list + i, list + i + 1, sizeof(sched_req *) * (size_t)(*n - i - 1));
    (*n)--;
}

void sched_add(sched *q, sched_req *r) {
    if (q->n_run + q->n_wait + 1 > q->cap) {
        q->cap = q->cap ? 2 * q->cap : 64;
        q->run = realloc(q->run, sizeof(sched_req *) * (size_t)q->cap);
        q->wait = realloc(q->wait, sizeof(sched_req *) * (size_t)q->cap);
        if (!q->run || !q->wait) abort();
    }
    r->arrival = ++q->arrivals, r->n_fed = 0, r->running = 0, r->n_cached = 0, r->n_hashed = 0, r->kept = 0;
    r->img_slot = -1;
    q->wait[q->n_wait++] = r;
}

void sched_remove(sched *q, sched_req *r) {
    for (int i = 0; i < q->n_run; i++)
        if (q->run[i] == r) remove_at(q->run, &q->n_run, i--);
    for (int i = 0; i < q->n_wait; i++)
        if (q->wait[i] == r) remove_at(q->wait, &q->n_wait, i--);
    pcache_release(q->e->pc, &r->g->kv);
    image_release(q, r);
}

static int known(const sched_req *r) { return r->g->n_prompt + r->g->n_out; }
static int token_at(const sched_req *r, int p) {
    return p < r->g->n_prompt ? r->g->prompt[p] : r->g->out[p - r->g->n_prompt];
}

/* Whether r still needs logit rows for prompt positions (echo logprobs). */
static int wants_prompt_rows(const sched_req *r) {
    const gen_request *g = r->g;
    return g->want_logprobs && g->want_prompt_logprobs && (g->n_plp == 0 || g->n_plp < g->n_prompt);
}

/* The prompt rows of r's chunk c: positions [*first, *first + count) predict
 * prompt[position + 1], positions not done yet. */
static int prompt_rows(const sched_req *r, int c, int *first) {
    if (!wants_prompt_rows(r)) return 0;
    int lo = r->g->n_plp > 1 ? r->g->n_plp - 1 : 0, hi = r->g->n_prompt - 1; /* rows at [lo, hi) */
    if (lo < r->n_fed) lo = r->n_fed;
    if (hi > r->n_fed + c) hi = r->n_fed + c;
    *first = lo;
    return hi > lo ? hi - lo : 0;
}

/* ---- the prefix cache ---- */

/* The key of r's block b (tokens into q->blk), chained on r->chain. */
static uint64_t block_key(sched *q, const sched_req *r, int b) {
    int bs = q->e->blocks.block_size;
    for (int k = 0; k < bs; k++) q->blk[k] = token_at(r, b * bs + k);
    return pcache_key(q->e->pc, r->chain, r->g->content_hash, q->blk);
}

/* r (no blocks yet) takes the cached blocks that start its known tokens, all
 * but the last token; n_fed starts past them. Returns the tokens taken. */
static int match_prefix(sched *q, sched_req *r) {
    pcache *pc = q->e->pc;
    int bs = q->e->blocks.block_size, max = (known(r) - 1) / bs;
    r->n_hashed = 0, r->chain = PCACHE_ROOT;
    if (wants_prompt_rows(r)) return r->n_fed = 0; /* every prompt position's logits: feed it all */
    if (q->e->snap) { /* a snapshot on disk may hold more of the prompt than the cache */
        int in_prompt = r->g->n_prompt / bs;
        kvstore_fill(q->e->snap, r->g->prompt, in_prompt < max ? in_prompt : max, r->g->content_hash);
    }
    for (int b = 0; b < max && pcache_enabled(pc); b++) {
        uint64_t key = block_key(q, r, b);
        int id = pcache_find(pc, key, r->chain, r->g->content_hash, q->blk);
        if (id < 0) break;
        pcache_take(pc, &r->g->kv, id);
        r->chain = key, r->n_hashed++;
    }
    return r->n_fed = r->n_hashed * bs;
}

/* Registers r's blocks that its fed tokens have filled since the last call. */
static void register_full(sched *q, sched_req *r) {
    pcache *pc = q->e->pc;
    int bs = q->e->blocks.block_size;
    while (pcache_enabled(pc) && (r->n_hashed + 1) * bs <= r->n_fed) {
        uint64_t key = block_key(q, r, r->n_hashed);
        pcache_register(pc, r->g->kv.table[r->n_hashed], key, r->chain, r->g->content_hash, q->blk);
        r->chain = key, r->n_hashed++;
    }
}

/* Saves r's keep_prefix snapshot once its prompt is fed that far. */
static void keep_prefix(sched *q, sched_req *r) {
    if (r->kept || !r->g->keep_prefix) return;
    int bs = q->e->blocks.block_size, n = r->g->n_prompt;
    int tokens = r->g->keep_prefix < 0 || r->g->keep_prefix > n ? n : r->g->keep_prefix;
    if (r->n_fed < tokens / bs * bs) return;
    r->kept = 1;
    if (!q->e->snap || tokens < bs) return;
    kvstore_save(q->e->snap, r->g->prompt, tokens / bs, &r->g->kv, r->g->content_hash);
}

/* Drops r's block references and puts it back among the waiting, in arrival
 * order; its registered blocks stay cached, to be found again on readmission. */
static void preempt(sched *q, int i) {
    sched_req *r = q->run[i];
    remove_at(q->run, &q->n_run, i);
    pcache_release(q->e->pc, &r->g->kv);
    image_release(q, r);
    r->n_fed = 0, r->running = 0, r->n_hashed = 0;
    int k = 0;
    while (k < q->n_wait && q->wait[k]->arrival < r->arrival) k++;
    memmove(q->wait + k + 1, q->wait + k, sizeof(sched_req *) * (size_t)(q->n_wait - k));
    q->wait[k] = r;
    q->n_wait++;
    q->preemptions++;
}

static int in_plan(const sched_plan *p, const sched_req *r) {
    for (int i = 0; i < p->n; i++)
        if (p->req[i] == r) return 1;
    return 0;
}

/* Reserves blocks for r's chunk c, preempting the newest running request not in
 * this step while the pool is short. Returns 1 if r is planned, 0 if r itself
 * was preempted. */
static int reserve(sched *q, sched_plan *p, sched_req *r, int c) {
    while (pcache_reserve(q->e->pc, &r->g->kv, r->n_fed + c)) {
        int victim = -1;
        for (int i = q->n_run - 1; i >= 0 && victim < 0; i--)
            if (q->run[i] != r && !in_plan(p, q->run[i])) victim = i;
        if (victim < 0) /* nothing else to take from: r waits */
            for (int i = 0; i < q->n_run; i++)
                if (q->run[i] == r) victim = i;
        int self = q->run[victim] == r;
        preempt(q, victim);
        if (self) return 0;
    }
    p->req[p->n] = r, p->chunk[p->n++] = c, p->tokens += c;
    return 1;
}

static void make_plan(sched *q, sched_plan *p, int budget) {
    /* decode tokens first, oldest first */
    for (int i = 0; i < q->n_run; i++) {
        sched_req *r = q->run[i];
        if (known(r) - r->n_fed != 1 || in_plan(p, r)) continue;
        if (!reserve(q, p, r, 1)) i = -1; /* the list changed: rescan */
    }
    /* then prompt chunks of running requests, then admissions in arrival order */
    for (int i = 0; i < q->n_run && p->tokens < budget; i++) {
        sched_req *r = q->run[i];
        int left = known(r) - r->n_fed;
        if (left <= 1 || in_plan(p, r)) continue;
        int c = left < budget - p->tokens ? left : budget - p->tokens;
        if (!reserve(q, p, r, c)) i = -1;
    }
    while (q->n_wait > 0 && p->tokens < budget) {
        sched_req *r = q->wait[0];
        int cached = match_prefix(q, r);
        int left = known(r) - cached, c = left < budget - p->tokens ? left : budget - p->tokens;
        if (pcache_reserve(q->e->pc, &r->g->kv, cached + c)) { /* FCFS: wait for blocks */
            pcache_release(q->e->pc, &r->g->kv);
            r->n_fed = 0, r->n_hashed = 0;
            break;
        }
        pcache_count(q->e->pc, known(r), cached);
        r->n_cached = cached;
        remove_at(q->wait, &q->n_wait, 0);
        r->running = 1;
        q->run[q->n_run++] = r;
        p->req[p->n] = r, p->chunk[p->n++] = c, p->tokens += c;
    }
}

/* The planned step as a glm_step; rows[l] is the request of sampled row l,
 * at logit row srow[l]. With full (whole logit rows on rank 0) the prompt
 * rows of requests that want them come too: prow[k] is the request of the
 * k-th, ppos[k] the prompt position it predicts, prl[k] its logit row. */
static void fill_step(sched *q, const sched_plan *p, glm_step *st, sched_req **rows, int *srow, int n_logits,
                      int full, sched_req **prow, int *ppos, int *prl) {
    int max_blocks = 1;
    for (int i = 0; i < p->n; i++)
        if (p->req[i]->g->kv.n_blocks > max_blocks) max_blocks = p->req[i]->g->kv.n_blocks;
    step_alloc(st, p->tokens, p->n, max_blocks, n_logits, q->e->blocks.block_size);
    int t = 0, l = 0, s = 0, k = 0;
    for (int i = 0; i < p->n; i++) {
        sched_req *r = p->req[i];
        int first = 0, np = full ? prompt_rows(r, p->chunk[i], &first) : 0;
        for (int c = 0; c < p->chunk[i]; c++, t++) {
            int pos = r->n_fed + c;
            st->ids[t] = token_at(r, pos);
            st->pos[t] = pos;
            st->seq[t] = i;
            if (pos >= first && pos < first + np) /* a prompt row */
                prow[k] = r, ppos[k] = pos + 1, prl[k++] = l, st->logit_rows[l++] = t;
        }
        if (r->n_fed + p->chunk[i] == known(r)) rows[s] = r, srow[s++] = l, st->logit_rows[l++] = t - 1;
        step_set_table(st, i, &r->g->kv);
        image_place ip = place_of(q, r);
        image_plan(st, &ip, r->img_slot, t - p->chunk[i], r->n_fed, p->chunk[i]);
    }
    step_fill_slots(st);
}

int sched_step(sched *q, int budget) {
    int cap = q->n_run + q->n_wait + 1;
    sched_plan p = {malloc(sizeof(sched_req *) * (size_t)cap), malloc(sizeof(int) * (size_t)cap), 0, 0};
    if (!p.req || !p.chunk) abort();
    make_plan(q, &p, budget);
    if (p.n == 0) {
        free(p.req);
        free(p.chunk);
        return 0;
    }
    /* Sampled rows; with logprobs asked by one of them (or prompt rows wanted),
     * the whole step takes the logits head and samples on rank 0 by the same
     * rule (sampling_sample_host equals the devices' path): same tokens. */
    int n_logits = 0, n_prompt_rows = 0, full = 0, first;
    for (int i = 0; i < p.n; i++) {
        sched_req *r = p.req[i];
        int last = r->n_fed + p.chunk[i] == known(r);
        n_logits += last;
        full |= last && r->g->want_logprobs;
        n_prompt_rows += prompt_rows(r, p.chunk[i], &first);
    }
    full |= n_prompt_rows > 0;
    int n_rows = n_logits + (full ? n_prompt_rows : 0);
    sched_req **rows = malloc(sizeof(sched_req *) * (size_t)(n_logits + 1));
    sched_req **prow = malloc(sizeof(sched_req *) * (size_t)(n_prompt_rows + 1));
    int *sampled = malloc(sizeof(int) * (size_t)(n_logits + 1));
    int *srow = malloc(sizeof(int) * (size_t)(n_logits + 1));
    int *ppos = malloc(sizeof(int) * (size_t)(n_prompt_rows + 1));
    int *prl = malloc(sizeof(int) * (size_t)(n_prompt_rows + 1));
    ksample_params *sp = malloc(sizeof *sp * (size_t)(n_logits + 1));
    if (!rows || !prow || !sampled || !srow || !ppos || !prl || !sp) abort();
    for (int i = 0; i < p.n; i++) image_need(q, p.req[i], p.req[i]->n_fed, p.chunk[i]);
    glm_step st = {0};
    fill_step(q, &p, &st, rows, srow, n_rows, full, prow, ppos, prl);
    for (int i = 0; i < n_logits; i++) {
        gen_request *g = rows[i]->g;
        sp[i] = (ksample_params){g->temperature, g->top_k, g->top_p, &g->rng};
    }
    int V = q->e->m->cfg.vocab;
    int n_real = q->tok ? tok_n_total(q->tok) : V; /* ids past the tokenizer are padding */
    float *logits = NULL;
    double t0 = util_now();
    if (full) { /* n_rows * V * 4 bytes gathered to rank 0 */
        if (!(logits = malloc(sizeof(float) * (size_t)n_rows * (size_t)V))) abort();
        engine_step(q->e, &st, logits, NULL);
        for (int i = 0; i < n_logits; i++)
            sampling_sample_host(&sampled[i], logits + (size_t)srow[i] * V, 1, n_real, V, &sp[i]);
        for (int k = 0; k < n_prompt_rows; k++)
            gen_store_logprobs(prow[k]->g, 1, ppos[k], logits + (size_t)prl[k] * V, V, n_real);
    } else
        engine_step_sample(q->e, &st, n_real, sp, sampled);
    step_free(&st);
    for (int i = 0; i < p.n; i++) {
        p.req[i]->n_fed += p.chunk[i];
        register_full(q, p.req[i]);
        keep_prefix(q, p.req[i]);
        image_done(q, p.req[i]);
    }
    q->steps++;
    if (q->hooks.on_step) q->hooks.on_step(q->hooks.user, &p, util_now() - t0);
    for (int i = 0; i < n_logits; i++) {
        sched_req *r = rows[i];
        for (int k = 0; k < r->n_stop_ids; k++)
            if (r->stop_ids[k] == sampled[i]) r->g->finish = "stop";
        int before = r->g->n_out;
        if (!r->g->finish) gen_accept_token(q->e, q->tok, r->g, sampled[i], &q->go, q->dbuf, q->dcap);
        if (logits && r->g->want_logprobs && r->g->n_out > before)
            gen_store_logprobs(r->g, 0, before, logits + (size_t)srow[i] * V, V, n_real);
        q->generated++;
        if (!r->g->finish && q->hooks.on_token) q->hooks.on_token(q->hooks.user, r);
    }
    double dt = util_now() - t0;
    if (dt > 0) q->tps = q->steps == 1 ? n_logits / dt : 0.9 * q->tps + 0.1 * n_logits / dt;
    for (int i = q->n_run - 1; i >= 0; i--)
        if (q->run[i]->g->finish) {
            sched_req *r = q->run[i];
            remove_at(q->run, &q->n_run, i);
            pcache_release(q->e->pc, &r->g->kv);
            image_release(q, r);
            q->hooks.on_finish(q->hooks.user, r);
        }
    free(rows);
    free(prow);
    free(sampled);
    free(srow);
    free(ppos);
    free(prl);
    free(sp);
    free(logits);
    free(p.req);
    free(p.chunk);
    return 1;
}
