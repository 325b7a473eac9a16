/* GET /metrics: the Prometheus text format (version 0.0.4), with vLLM's names
 * and meanings where vLLM has the metric (vLLM V1's, vllm/v1/metrics/loggers.py),
 * each with the label model_name. From the engine loop's published figures
 * (queue.h srv_stats, srv_metrics), copied under the server's mutex. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "openai.h"

typedef struct buf {
    char *p;
    size_t len, cap;
} buf;

static void put(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(buf *b, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) abort();
        if (b->len + (size_t)n < b->cap) {
            b->len += (size_t)n;
            return;
        }
        b->cap = (b->len + (size_t)n + 1) * 2;
        if (!(b->p = realloc(b->p, b->cap))) abort();
    }
}

static void family(buf *b, const char *name, const char *type, const char *help) {
    put(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void gauge(buf *b, const char *lbl, const char *name, const char *help, double v) {
    family(b, name, "gauge", help);
    put(b, "%s{%s} %.17g\n", name, lbl, v);
}

static void counter(buf *b, const char *lbl, const char *name, const char *help, double v) {
    family(b, name, "counter", help);
    put(b, "%s{%s} %.17g\n", name, lbl, v);
}

static void histogram(buf *b, const char *lbl, const char *name, const char *help, const srv_hist *h) {
    family(b, name, "histogram", help);
    long long cum = 0;
    for (int i = 0; i < h->n; i++) {
        cum += h->bucket[i];
        put(b, "%s_bucket{%s,le=\"%g\"} %lld\n", name, lbl, h->le[i], cum);
    }
    cum += h->bucket[h->n];
    put(b, "%s_bucket{%s,le=\"+Inf\"} %lld\n%s_count{%s} %lld\n%s_sum{%s} %.17g\n", name, lbl, cum, name, lbl,
        h->count, name, lbl, h->sum);
}

char *oai_metrics_text(oai_ctx *h, size_t *len) {
    pthread_mutex_lock(&h->s->mu);
    srv_stats st = h->s->stats;
    srv_metrics m = h->s->metrics;
    int inbox = h->s->n_in;
    pthread_mutex_unlock(&h->s->mu);
    buf b = {malloc(4096), 0, 4096};
    if (!b.p) abort();
    char lbl[300];
    snprintf(lbl, sizeof lbl, "model_name=\"%s\"", h->model_name); /* the name has no quotes: checked at start */
    gauge(&b, lbl, "vllm:num_requests_running", "Number of requests in model execution batches.", st.running);
    gauge(&b, lbl, "vllm:num_requests_waiting", "Number of requests waiting to be processed.",
          st.queue_depth + inbox);
    int total = st.kv_used + st.kv_free;
    gauge(&b, lbl, "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
          total ? (double)st.kv_used / total : 0.0);
    counter(&b, lbl, "vllm:prefix_cache_queries_total",
            "Prefix cache queries, in terms of number of queried tokens.", (double)st.prompt_tokens);
    counter(&b, lbl, "vllm:prefix_cache_hits_total", "Prefix cache hits, in terms of number of cached tokens.",
            (double)st.cached_tokens);
    counter(&b, lbl, "vllm:num_preemptions_total", "Cumulative number of preemption from the engine.",
            (double)st.preemptions);
    counter(&b, lbl, "vllm:prompt_tokens_total", "Number of prefill tokens processed (of finished requests).",
            (double)m.prompt_tokens);
    counter(&b, lbl, "vllm:generation_tokens_total", "Number of generation tokens processed.", (double)st.generated);
    family(&b, "vllm:request_success_total", "counter", "Count of successfully processed requests.");
    put(&b, "vllm:request_success_total{%s,finished_reason=\"stop\"} %lld\n", lbl, m.finished_stop);
    put(&b, "vllm:request_success_total{%s,finished_reason=\"length\"} %lld\n", lbl, m.finished_length);
    put(&b, "vllm:request_success_total{%s,finished_reason=\"abort\"} %lld\n", lbl, m.finished_abort);
    histogram(&b, lbl, "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", &m.ttft);
    histogram(&b, lbl, "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", &m.itl);
    histogram(&b, lbl, "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", &m.e2e);
    *len = b.len;
    return b.p;
}
