#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "step.h"

static int32_t *alloc_i32(int n) {
    int32_t *p = calloc((size_t)(n > 0 ? n : 1), sizeof(int32_t));
    if (!p) {
        fprintf(stderr, "glmtp: out of memory for a step\n");
        abort();
    }
    return p;
}

void step_alloc(glm_step *s, int n_tokens, int n_seqs, int max_blocks, int n_logits, int block_size) {
    s->n_tokens = n_tokens;
    s->n_seqs = n_seqs;
    s->max_blocks = max_blocks;
    s->n_logits = n_logits;
    s->block_size = block_size;
    s->head = STEP_LOGITS;
    s->vocab_limit = s->cands = 0;
    s->ids = alloc_i32(n_tokens);
    s->pos = alloc_i32(n_tokens);
    s->seq = alloc_i32(n_tokens);
    s->slots = alloc_i32(n_tokens);
    s->block_tables = alloc_i32(n_seqs * max_blocks);
    s->logit_rows = alloc_i32(n_logits);
    s->temps = (float *)alloc_i32(n_logits); /* 4-byte words: one allocator */
    s->rope_pos = alloc_i32(n_tokens);
    s->rope_sep = 0;
    s->n_img = 0;
    s->img = NULL;
    for (int i = 0; i < n_seqs * max_blocks; i++) s->block_tables[i] = -1;
}

void step_free(glm_step *s) {
    free(s->ids);
    free(s->pos);
    free(s->seq);
    free(s->slots);
    free(s->block_tables);
    free(s->logit_rows);
    free(s->temps);
    free(s->rope_pos);
    free(s->img);
    memset(s, 0, sizeof *s);
}

void step_alloc_img(glm_step *s, int n) {
    free(s->img);
    s->img = alloc_i32(4 * n);
    s->n_img = n;
}

void step_set_table(glm_step *s, int seq, const kv_seq *kvs) {
    for (int i = 0; i < kvs->n_blocks && i < s->max_blocks; i++) s->block_tables[seq * s->max_blocks + i] = kvs->table[i];
}

void step_fill_slots(glm_step *s) {
    for (int t = 0; t < s->n_tokens; t++) {
        int p = s->pos[t];
        int blk = s->block_tables[s->seq[t] * s->max_blocks + p / s->block_size];
        s->slots[t] = blk * s->block_size + p % s->block_size;
    }
}

void step_bcast(comm *c, glm_step *s) {
    int32_t hdr[11] = {s->n_tokens, s->n_seqs,    s->max_blocks, s->n_logits, s->block_size, s->head,
                       s->vocab_limit, s->cands, s->rope_sep,   s->n_img,    s->img_slot};
    c->iface->bcast(c->ctx, hdr, sizeof hdr);
    if (c->rank != 0) {
        step_alloc(s, hdr[0], hdr[1], hdr[2], hdr[3], hdr[4]);
        s->head = hdr[5], s->vocab_limit = hdr[6], s->cands = hdr[7], s->rope_sep = hdr[8], s->img_slot = hdr[10];
        if (hdr[9] > 0) step_alloc_img(s, hdr[9]);
    }
    /* One message for the arrays: pack on rank 0, unpack elsewhere. */
    size_t nt = (size_t)s->n_tokens, nb = (size_t)s->n_seqs * s->max_blocks, nl = (size_t)s->n_logits;
    size_t nr = s->rope_sep ? nt : 0, ni = 4 * (size_t)s->n_img;
    size_t total = 4 * nt + nb + 2 * nl + nr + ni;
    int32_t *buf = alloc_i32((int)total);
    void *parts[] = {s->ids, s->pos, s->seq, s->slots, s->block_tables, s->logit_rows, s->temps, s->rope_pos, s->img};
    size_t lens[] = {nt, nt, nt, nt, nb, nl, nl, nr, ni};
    enum { NPARTS = sizeof lens / sizeof *lens };
    size_t off = 0;
    if (c->rank == 0)
        for (int i = 0; i < NPARTS; off += lens[i], i++)
            if (lens[i]) memcpy(buf + off, parts[i], lens[i] * 4); /* empty steps have NULL arrays */
    c->iface->bcast(c->ctx, buf, total * sizeof(int32_t));
    off = 0;
    if (c->rank != 0)
        for (int i = 0; i < NPARTS; off += lens[i], i++)
            if (lens[i]) memcpy(parts[i], buf + off, lens[i] * 4);
    free(buf);
}
