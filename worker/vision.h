/* vision.h: GLM-4V's vision tower and adapter on this rank's shard, written
 * once against kernels.h and comm.h (glm4v-spec.md sections 5 and 6).
 *
 * Sharding (as vLLM's): the ViT's QKV by heads, its dense and fc2 by input
 * columns (row-parallel: one all-reduce each), fc1 by rows; the adapter's
 * gate/up by rows and its down projection by columns (one all-reduce). The
 * patch convolution, positions, LayerNorms, the 2x2 convolution, linear_proj
 * and boi/eoi are replicated. Biases of row-parallel layers are added on rank 0
 * only, so that the all-reduce sums them once. Every rank runs the tower on the
 * same pixels and ends with the whole image embedding. */
#ifndef GLMTP_VISION_H
#define GLMTP_VISION_H

#include "../comm/comm.h"
#include "../kernels/kernels.h"
#include "config.h"
#include "safetensors.h"

typedef struct glm_vision glm_vision;

/* Loads transformer.vision.* of an open checkpoint for rank c->rank of
 * c->size (config_check_tp passed). Returns 0, or -1 with a message naming
 * the tensor. Weight bytes are added to *sharded and *replicated. */
int vision_load(glm_vision **out, const glm_config *cfg, const st_set *st, const char *dir, kbackend kb, comm *c,
                size_t *sharded, size_t *replicated, char *err, size_t errlen);
void vision_free(glm_vision *v); /* accepts NULL */

/* Collective. pixels: host [in_ch, image, image] fp32, normalised (the same
 * on every rank); out: backend memory [config_image_tokens, hidden]
 * activations: boi, the (grid/2)^2 patch embeddings row-major, eoi, already
 * divided by the scaling factor. Scratch is kept between calls. */
void vision_encode(glm_vision *v, const float *pixels, void *out);

/* Seconds spent in vision_encode so far (all-reduces included), and the part
 * of them spent in the ViT's layers (bench image scales that part when it runs
 * fewer layers than the config has). */
double vision_seconds(const glm_vision *v);
double vision_layer_seconds(const glm_vision *v);

/* From now on vision_encode runs only the first n of the config's layers (1 <=
 * n <= vision_config.num_hidden_layers): `glmtp bench image --vision-layers`,
 * which makes real-shape timings tractable on CPU ranks. Outputs are then not
 * the model's. */
void vision_set_layers(glm_vision *v, int n);

/* ---- sizes from the config alone (model_load, the engine's KV reserve, the
 * bench's plan and FLOP figures); 0 without a vision tower ---- */

/* Bytes of rank `rank` of tp's tower and adapter weights in a device backend's
 * memory (matrices bf16, vectors fp32: kernels.h), as vision_load uploads them. */
double vision_device_bytes(const glm_config *cfg, int tp, int rank);

/* Bytes of backend memory one image takes on rank `rank` of tp while it is
 * encoded, at act_bytes per activation (2 on GPUs, 4 on the CPU): the scratch
 * vision_encode allocates at its first image and keeps, plus the image's
 * embedding rows (forward_image's slot). What the KV pool must leave free. */
double vision_act_bytes(const glm_config *cfg, int tp, int rank, int act_bytes);

/* FLOPs of one image through the patch embedding, the first `layers` ViT
 * layers and the adapter, summed over all ranks: 2 per multiply-add of every
 * matmul as vision_encode runs it (the cls row included), attention over all
 * T x T (query, key) pairs (bidirectional). Norms and activations not counted. */
double vision_flops(const glm_config *cfg, int layers);

#endif
