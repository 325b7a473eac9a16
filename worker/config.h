/* config.h: GLM-4 model configuration read from a checkpoint's config.json.
 * Both layouts: the original THUDM one (model_type "chatglm": num_layers,
 * multi_query_group_num, rope_ratio, padded_vocab_size, ...) and the HF-native
 * one (model_type "glm": num_key_value_heads, rope_theta, partial_rotary_factor).
 * Every dimension comes from the file; nothing here knows GLM-4-9B's numbers. */
#ifndef GLMTP_CONFIG_H
#define GLMTP_CONFIG_H

#include <stddef.h>
#include <stdint.h>

typedef enum { LAYOUT_CHATGLM = 0, LAYOUT_HF = 1 } glm_layout;

#define GLM_MAX_EOS 8

typedef struct glm_config {
    glm_layout layout;
    int n_layers;
    int hidden;   /* H */
    int ffn;      /* F: gate and up are each F wide */
    int n_heads;  /* query heads */
    int n_kv;     /* KV groups */
    int head_dim; /* d */
    int rot_dim;  /* rotary dims at the start of each head */
    int vocab;    /* rows of embedding and LM head (padded) */
    int seq_len;  /* context length */
    double rope_base;
    float eps;
    int qkv_bias;
    int n_eos;
    int eos_ids[GLM_MAX_EOS];
    int pad_id;
} glm_config;

/* Reads DIR/config.json. Returns 0, or -1 with a message naming the file and
 * field in err. */
int config_load(glm_config *cfg /* OUT */, const char *dir, char *err, size_t errlen);

/* The same checks on len bytes of config.json text (need not be
 * NUL-terminated); path only names the file in messages. config_load reads
 * the file and calls this. */
int config_parse(glm_config *cfg /* OUT */, const char *text, size_t len, const char *path, char *err,
                 size_t errlen);

/* Checks that tp ranks can split this model (tp divides the query heads, and
 * divides the KV groups or is a multiple of them). 0 or -1 with err. */
int config_check_tp(const glm_config *cfg, int tp, char *err, size_t errlen);

/* Hash of every field, to check all ranks loaded the same model. */
uint64_t config_hash(const glm_config *cfg);

#endif
