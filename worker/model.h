/* model.h: one rank's share of a GLM-4 checkpoint, loaded into a backend.
 *
 * Each rank copies only its own slices out of the mmap'ed safetensors (see
 * shard.h), checking every tensor's presence and shape against config.json.
 * Names of both layouts are understood; the HF layout's q/k/v_proj are fused
 * here into the same [q_r; k_r; v_r] block the original layout gives. */
#ifndef GLMTP_MODEL_H
#define GLMTP_MODEL_H

#include <stddef.h>

#include "../comm/comm.h"
#include "../kernels/kernels.h"
#include "config.h"
#include "shard.h"

typedef struct glm_layer {
    kweight ln1;   /* [1, H] */
    kweight qkv;   /* [(nq + 2 nkv) d, H] local rows */
    kweight qkv_b; /* [1, (nq + 2 nkv) d], data NULL without bias */
    kweight dense; /* [H, nq d] local input columns */
    kweight ln2;   /* [1, H] */
    kweight h4h;   /* [2 (f1 - f0), H]: gate rows then up rows */
    kweight down;  /* [H, f1 - f0] */
} glm_layer;

typedef struct glm_model {
    glm_config cfg;
    glm_shard shard;
    kbackend kb;
    comm *comm;
    kweight embed;    /* [V, H] replicated */
    kweight final_ln; /* [1, H] */
    kweight lm_head;  /* [v1 - v0, H] */
    glm_layer *layers;
    struct glm_vision *vision; /* GLM-4V's tower and adapter (vision.h), or NULL */
    size_t bytes_sharded;    /* this rank's slices of the language model's split weights */
    size_t bytes_replicated; /* language-model weights every rank holds whole */
    size_t bytes_vision;     /* this rank's share of the vision tower and adapter (0 without one) */
    uint64_t fingerprint;    /* which checkpoint: config_hash and st_fingerprint (KV snapshots name it) */
} glm_model;

/* Loads DIR for this rank (c->rank of c->size). Returns 0, or -1 with a message
 * naming the file and tensor or field. The model keeps kb and c (not owned). */
int model_load(glm_model **out, const char *dir, kbackend kb, comm *c, char *err, size_t errlen);
/* Frees weights; accepts NULL. */
void model_free(glm_model *m);

#endif
