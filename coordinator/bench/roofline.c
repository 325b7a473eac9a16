/* Analytic model (see roofline.h). */
#include "roofline.h"

#include <string.h>

#include "../../worker/shard.h"
#include "../../worker/vision.h"

/* Datasheet figures: NVIDIA H100 SXM5 / H200 SXM / A100 SXM4 80GB (dense bf16,
 * no sparsity); NVLink 4 = 900 GB/s bidirectional per GPU, PCIe 5.0 x16 =
 * 64 GB/s per direction, InfiniBand NDR = 400 Gb/s per GPU. Latencies are
 * typical NCCL small-message all-reduce times, not datasheet values. */
static const hw_gpu gpus[] = {
    {"h100", 989e12, 3.35e12, 80e9},
    {"h200", 989e12, 4.8e12, 141e9},
    {"a100", 312e12, 2.039e12, 80e9},
};
static const hw_link links[] = {
    {"nvlink4", 450e9, 8e-6},
    {"pcie5", 64e9, 15e-6},
    {"ib-ndr", 50e9, 20e-6},
};

const hw_gpu *roofline_gpu(const char *name) {
    for (size_t i = 0; i < sizeof gpus / sizeof *gpus; i++)
        if (name && strcmp(gpus[i].name, name) == 0) return &gpus[i];
    return NULL;
}

const hw_link *roofline_link(const char *name) {
    for (size_t i = 0; i < sizeof links / sizeof *links; i++)
        if (name && strcmp(links[i].name, name) == 0) return &links[i];
    return NULL;
}

#define BF16 2.0

void roofline_sizes(const glm_config *c, int tp, roofline_model *m) {
    glm_shard s;
    shard_plan(&s, c, tp, 0);
    double H = c->hidden, d = c->head_dim, nf = s.f1 - s.f0, vr = s.v1 - s.v0;
    double qkv = (s.nq + 2.0 * s.nkv) * d;
    double layer = qkv * H + (c->qkv_bias ? qkv : 0) + H * s.nq * d + 2 * nf * H + H * nf; /* matrices + bias */
    double norms = 2 * H * c->n_layers + H;
    double linear = c->n_layers * layer + vr * H;
    m->weight_bytes = BF16 * (linear + norms);
    m->vision_bytes = vision_device_bytes(c, tp, 0); /* held, but not read by a decode step */
    m->weight_bytes_held = m->weight_bytes + BF16 * (double)c->vocab * H + m->vision_bytes;
    m->kv_bytes_token = BF16 * 2.0 * c->n_layers * s.nkv * d;
    m->flops_token = 2.0 * linear;
}

/* Ring all-reduce of `bytes`, two per layer. */
static double comm_time(const glm_config *c, int tp, const hw_link *l, double bytes) {
    if (tp == 1) return 0.0;
    return 2.0 * c->n_layers * (l->latency + 2.0 * (tp - 1) / tp * bytes / l->bw);
}

static double max2(double a, double b) { return a > b ? a : b; }

/* A decode step with kv_token bytes of KV per token per rank. */
static roofline_time decode_time(const glm_config *c, int tp, const hw_gpu *g, const hw_link *l, int batch,
                                 long context, double kv_token) {
    roofline_model m;
    roofline_sizes(c, tp, &m);
    glm_shard s;
    shard_plan(&s, c, tp, 0);
    double attn_flops = 4.0 * batch * (double)context * s.nq * c->head_dim * c->n_layers;
    roofline_time t;
    t.memory = (m.weight_bytes + (double)batch * context * kv_token) / g->hbm;
    t.compute = (batch * m.flops_token + attn_flops) / g->flops;
    t.comm = comm_time(c, tp, l, BF16 * batch * c->hidden);
    t.total = max2(t.memory, t.compute) + t.comm;
    return t;
}

roofline_time roofline_decode(const glm_config *c, int tp, const hw_gpu *g, const hw_link *l, int batch,
                              long context) {
    roofline_model m;
    roofline_sizes(c, tp, &m);
    return decode_time(c, tp, g, l, batch, context, m.kv_bytes_token);
}

roofline_time roofline_prefill(const glm_config *c, int tp, const hw_gpu *g, const hw_link *l, long tokens) {
    roofline_model m;
    roofline_sizes(c, tp, &m);
    glm_shard s;
    shard_plan(&s, c, tp, 0);
    double L = (double)tokens;
    /* Causal attention: QK^T and PV over L^2/2 pairs, 2 FLOPs per MAC. */
    double attn_flops = 2.0 * L * L * s.nq * c->head_dim * c->n_layers;
    roofline_time t;
    t.compute = (L * m.flops_token + attn_flops) / g->flops;
    t.memory = (m.weight_bytes + L * m.kv_bytes_token) / g->hbm;
    t.comm = comm_time(c, tp, l, BF16 * L * c->hidden);
    t.total = max2(t.compute, t.memory) + t.comm;
    return t;
}

double roofline_max_tokens(const glm_config *c, int tp, const hw_gpu *g, double util) {
    roofline_model m;
    roofline_sizes(c, tp, &m);
    double free_bytes = g->mem_bytes * util - m.weight_bytes_held;
    return free_bytes > 0 ? free_bytes / m.kv_bytes_token : 0.0;
}

const hw_gpu *roofline_gpus(int *n) {
    *n = (int)(sizeof gpus / sizeof *gpus);
    return gpus;
}

double roofline_kv_elem_bytes(const char *dtype, int head_dim) {
    if (dtype && strcmp(dtype, "bf16") == 0) return BF16;
    if (dtype && strcmp(dtype, "fp8") == 0) return 1.0 + 4.0 / head_dim;
    return -1;
}

/* As engine.c's activation_bytes: forward.c's buffers for `tokens` rows and
 * 256 rows of fp32 logits over the rank's vocabulary slice. */
double roofline_act_bytes(const glm_config *c, int tp, int tokens) {
    glm_shard s;
    shard_plan(&s, c, tp, 0);
    double ld = (double)(s.nq + 2 * s.nkv) * c->head_dim, nf = s.f1 - s.f0;
    double per = 3.0 * c->hidden + ld + (double)s.nq * c->head_dim + 3 * nf;
    return (double)tokens * per * BF16 + 256.0 * (s.v1 - s.v0) * 4;
}

void roofline_need(const glm_config *c, int tp, long context, double kv_elem, roofline_plan *p) {
    roofline_model m;
    roofline_sizes(c, tp, &m);
    memset(p, 0, sizeof *p);
    p->tp = tp;
    p->weight_bytes = m.weight_bytes_held;
    p->vision_weight_bytes = m.vision_bytes;
    p->kv_token_bytes = m.kv_bytes_token / BF16 * kv_elem;
    p->kv_bytes = (double)context * p->kv_token_bytes;
    /* an image's scratch beside a full step's activations: the engine reserves both (engine.c) */
    p->vision_act_bytes = vision_act_bytes(c, tp, 0, (int)BF16);
    p->act_bytes = roofline_act_bytes(c, tp, ROOFLINE_ACT_TOKENS) + p->vision_act_bytes;
    p->need_bytes = p->weight_bytes + p->kv_bytes + p->act_bytes + ROOFLINE_SLACK_BYTES;
}

int roofline_plan_fit(const glm_config *c, const hw_gpu *g, const hw_link *l, long context, double kv_elem,
                      double util, roofline_plan *p) {
    memset(p, 0, sizeof *p);
    char err[256];
    for (int tp = 1; tp <= ROOFLINE_MAX_TP; tp *= 2) {
        if (config_check_tp(c, tp, err, sizeof err)) continue;
        roofline_plan q;
        roofline_need(c, tp, context, kv_elem, &q);
        q.room_bytes = util * g->mem_bytes;
        q.prefill_s = roofline_prefill(c, tp, g, l, context).total;
        q.decode_s = decode_time(c, tp, g, l, 1, context, q.kv_token_bytes).total;
        *p = q;
        if (q.need_bytes <= q.room_bytes) return tp;
    }
    p->tp = 0; /* the figures stay those of the largest tp tried */
    return 0;
}
