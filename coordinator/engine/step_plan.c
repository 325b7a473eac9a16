#include "step_plan.h"

#include "engine.h"

void plan_one_seq(glm_step *s, const kv_seq *seq, const int *ids, int start, int n, int block_size, int all_logits) {
    step_alloc(s, n, 1, seq->n_blocks, all_logits ? n : 1, block_size);
    for (int t = 0; t < n; t++) {
        s->ids[t] = ids[t];
        s->pos[t] = start + t;
        s->seq[t] = 0;
    }
    for (int i = 0; i < s->n_logits; i++) s->logit_rows[i] = all_logits ? i : n - 1;
    step_set_table(s, 0, seq);
    step_fill_slots(s);
}

int plan_check_ids(const comm *c, const int *ids, int n, const glm_config *cfg, const char *what) {
    if (n > cfg->seq_len) {
        engine_error(c, "%s: %d tokens exceed the context length %d (config.json)", what, n, cfg->seq_len);
        return 1;
    }
    for (int i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= cfg->vocab) {
            engine_error(c, "%s: id %d at index %d is outside the vocabulary [0, %d)", what, ids[i], i, cfg->vocab);
            return 1;
        }
    }
    return 0;
}
