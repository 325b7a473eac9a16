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

/* GLM-4V's vision tower and adapter (config.json "vision_config"; absent:
 * present = 0). image/patch: pixels on a side and per patch (a grid of
 * image / patch patches a side, even: the adapter's 2x2 convolution halves
 * it). Image embeddings per image: (grid / 2)^2 patches + boi + eoi. */
typedef struct glm_vision_config {
    int present;
    int hidden, n_layers, n_heads, ffn; /* the ViT: width, layers, heads (dim hidden / n_heads), MLP width */
    int image, patch, in_ch;            /* pixels a side, per patch, input channels */
    int n_pos;                          /* learned positions: grid^2 + 1 (cls) */
    float eps;                          /* the ViT's LayerNorm epsilon */
    float glu_eps;                      /* the adapter's LayerNorm (nn.LayerNorm default 1e-5) */
    double scaling;                     /* the adapter's output is divided by it */
    int boi_id, eoi_id;                 /* begin/end-of-image token ids; the placeholder is pad_id */
} glm_vision_config;

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
    glm_vision_config vision;
} glm_config;

/* Rows of embeddings one image gives (boi, the downsampled patches, eoi); 0
 * without a vision tower. */
int config_image_tokens(const glm_config *cfg);

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
