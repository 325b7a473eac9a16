/* step.h: the work of one forward step, as rank 0 plans it and every rank runs it.
 *
 * A flat, ragged batch (as in vLLM): n_tokens tokens from n_seqs sequences, each
 * token with its sequence index and position; per sequence a block table row.
 * logit_rows lists the tokens whose logits rank 0 wants back (the last token of
 * each sampling sequence, or every token when scoring).
 *
 * Rank 0 fills a step and calls step_bcast; other ranks receive into an empty one,
 * as a header of ints and one message of raw int32 arrays. Not protobuf, as
 * DESIGN.md first planned: the arrays (block tables above all: 64 sequences of
 * 128K tokens are 2 MB a step) would be varint-coded and decoded on every rank
 * every step, and the worker would need protobuf-c where nothing else does
 * (the GPU check machine builds without it). */
#ifndef GLMTP_STEP_H
#define GLMTP_STEP_H

#include <stdint.h>

#include "../comm/comm.h"
#include "kvcache.h"

typedef struct glm_step {
    int n_tokens, n_seqs, max_blocks, n_logits, block_size;
    int32_t *ids;          /* [n_tokens] */
    int32_t *pos;          /* [n_tokens] */
    int32_t *seq;          /* [n_tokens] */
    int32_t *slots;        /* [n_tokens] derived: KV slot of each token */
    int32_t *block_tables; /* [n_seqs * max_blocks], -1 padded */
    int32_t *logit_rows;   /* [n_logits] token indices */
    /* What leaves the devices for the logit rows (forward.h):
     * STEP_LOGITS: the logits; STEP_ARGMAX: each row's argmax over ids
     * [0, vocab_limit); STEP_SAMPLE: each rank's first `cands` sampling
     * candidates (kernels/sampling.h) of ids [0, vocab_limit) at temperature
     * temps[row], and the row's softmax normaliser. */
    int head, vocab_limit, cands;
    float *temps; /* [n_logits] */
    /* RoPE positions when they differ from pos (GLM-4V: an image's patch
     * embeddings share one position, glm4v-spec.md 7.2): rope_sep 1 and
     * rope_pos [n_tokens]; else rope_sep 0 and pos serves both. pos stays the
     * KV index (slot, causal order). */
    int rope_sep;
    int32_t *rope_pos;
    /* Image embeddings spliced over the word embeddings: span i covers tokens
     * img[4i] .. img[4i] + img[4i+1] - 1 with rows img[4i+3] .. of the image in
     * forward slot img[4i+2] (forward_image). */
    int n_img;
    int32_t *img; /* [4 n_img] */
    int img_slot; /* STEP_IMAGE, STEP_IMAGE_DROP: the forward's image slot */
} glm_step;

/* STEP_KVSNAP: no tokens; a KV snapshot command (kvsnap.h) follows it.
 * STEP_IMAGE: no tokens; the pixels of an image follow (forward_image encodes
 * them into slot img_slot). STEP_IMAGE_DROP: slot img_slot is free again. */
enum { STEP_LOGITS = 0, STEP_ARGMAX = 1, STEP_SAMPLE = 2, STEP_KVSNAP = 3, STEP_IMAGE = 4, STEP_IMAGE_DROP = 5 };

/* Allocates the arrays for the given sizes (zeroed). Aborts on OOM. */
void step_alloc(glm_step *s, int n_tokens, int n_seqs, int max_blocks, int n_logits, int block_size);
/* Room for n image spans (s->img; n_img set). */
void step_alloc_img(glm_step *s, int n);
void step_free(glm_step *s);
/* Sets row `seq` of the block tables from a sequence's table. */
void step_set_table(glm_step *s, int seq, const kv_seq *kvs);
/* Derives slots from positions and block tables (rank 0, after filling). */
void step_fill_slots(glm_step *s);
/* Rank 0's step to every rank (collective). Non-root s must be empty (zeroed). */
void step_bcast(comm *c, glm_step *s);

#endif
