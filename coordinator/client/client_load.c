/* Serving load generator (see client_load.h). One thread per request keeps the
 * code plain: each sleeps until its arrival time, connects, sends, and stamps
 * every streamed delta; the main thread joins them and computes the figures. */
#include <cjson/cJSON.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../../kernels/rng.h"
#include "../../proto/wire.h"
#include "client_load.h"
#include "client_wire.h"
#include "glmtp.pb-c.h"

typedef struct load_req {
    const load_opts *o;
    int index;
    double t_start; /* scheduled arrival, seconds after t0 */
    double t0;      /* run start (monotonic) */
    int *ids;
    /* results */
    int ok, n_tokens;
    double t_send, t_first, t_last; /* absolute */
    double *itl;                    /* inter-token gaps, seconds */
    int n_itl, cap_itl;
    char err[256];
} load_req;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void add_gap(load_req *r, double gap) {
    if (r->n_itl == r->cap_itl) {
        r->cap_itl = r->cap_itl ? 2 * r->cap_itl : 64;
        r->itl = realloc(r->itl, sizeof(double) * (size_t)r->cap_itl);
        if (!r->itl) abort();
    }
    r->itl[r->n_itl++] = gap;
}

/* Tokens arriving together in one delta share its gap evenly, as vLLM counts them. */
static void stamp(load_req *r, size_t n, double t) {
    if (n == 0) return;
    if (r->n_tokens == 0) {
        r->t_first = t;
    } else {
        for (size_t i = 0; i < n; i++) add_gap(r, (t - r->t_last) / (double)n);
    }
    r->n_tokens += (int)n;
    r->t_last = t;
}

static void *run_one(void *arg) {
    load_req *r = arg;
    const load_opts *o = r->o;
    double wait = r->t0 + r->t_start - now_s();
    if (wait > 0) {
        struct timespec ts = {(time_t)wait, (long)((wait - (double)(time_t)wait) * 1e9)};
        nanosleep(&ts, NULL);
    }
    int fd = wire_connect(o->addr, r->err, sizeof r->err);
    if (fd < 0) return NULL;
    if (client_auth(fd, o->token_file, r->err, sizeof r->err)) {
        close(fd);
        return NULL;
    }
    Glmtp__ClientMessage cm = GLMTP__CLIENT_MESSAGE__INIT;
    char rid[64];
    snprintf(rid, sizeof rid, "load-%d-%d", (int)getpid(), r->index);
    Glmtp__GenerateRequest g = GLMTP__GENERATE_REQUEST__INIT;
    Glmtp__TokenIds ti = GLMTP__TOKEN_IDS__INIT;
    ti.ids = r->ids, ti.n_ids = (size_t)o->in_len;
    g.request_id = rid;
    g.input_case = GLMTP__GENERATE_REQUEST__INPUT_TOKEN_IDS, g.token_ids = &ti;
    g.has_max_new_tokens = 1, g.max_new_tokens = o->out_len;
    g.has_temperature = 1, g.temperature = 0.0f;
    g.has_stream = 1, g.stream = 1;
    cm.msg_case = GLMTP__CLIENT_MESSAGE__MSG_GENERATE, cm.generate = &g;
    r->t_send = now_s();
    if (client_send(fd, &cm, r->err, sizeof r->err)) {
        close(fd);
        return NULL;
    }
    for (;;) {
        uint8_t *body;
        long n = wire_read_frame(fd, &body, 1u << 30, r->err, sizeof r->err);
        double t = now_s();
        if (n <= 0) {
            if (n == 0) snprintf(r->err, sizeof r->err, "the server closed the connection");
            break;
        }
        Glmtp__ServerMessage *m = glmtp__server_message__unpack(NULL, (size_t)n, body);
        free(body);
        if (!m || m->msg_case != GLMTP__SERVER_MESSAGE__MSG_RESPONSE) {
            snprintf(r->err, sizeof r->err, "%s",
                     m && m->msg_case == GLMTP__SERVER_MESSAGE__MSG_ERROR && m->error->message ? m->error->message
                                                                                              : "unexpected reply");
            if (m) glmtp__server_message__free_unpacked(m, NULL);
            break;
        }
        Glmtp__GenerateResponse *gr = m->response;
        int done = 1;
        if (gr->body_case == GLMTP__GENERATE_RESPONSE__BODY_DELTA) {
            stamp(r, gr->delta->n_token_ids, t);
            done = 0;
        } else if (gr->body_case == GLMTP__GENERATE_RESPONSE__BODY_FINAL) {
            stamp(r, gr->final->n_token_ids, t);
            r->ok = 1;
        } else if (gr->body_case == GLMTP__GENERATE_RESPONSE__BODY_PROGRESS) {
            done = 0; /* prefill progress of a long prompt: no tokens yet */
        } else {
            snprintf(r->err, sizeof r->err, "%s",
                     gr->body_case == GLMTP__GENERATE_RESPONSE__BODY_ERROR && gr->error->message ? gr->error->message
                                                                                               : "empty response");
        }
        glmtp__server_message__free_unpacked(m, NULL);
        if (done) break;
    }
    close(fd);
    return NULL;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile of sorted v. */
static double pct(const double *v, int n, double p) {
    if (n == 0) return 0.0;
    int k = (int)ceil(p / 100.0 * n) - 1;
    return v[k < 0 ? 0 : k >= n ? n - 1 : k];
}

typedef struct dist {
    double mean, p50, p90, p99;
    int n;
} dist;

static dist summarise(double *v, int n) {
    dist d = {0, 0, 0, 0, n};
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    for (int i = 0; i < n; i++) d.mean += v[i] / n;
    d.p50 = pct(v, n, 50), d.p90 = pct(v, n, 90), d.p99 = pct(v, n, 99);
    return d;
}

static void add_dist(cJSON *j, const char *name, dist d) {
    cJSON *o = cJSON_AddObjectToObject(j, name);
    cJSON_AddNumberToObject(o, "mean_ms", d.mean * 1e3);
    cJSON_AddNumberToObject(o, "p50_ms", d.p50 * 1e3);
    cJSON_AddNumberToObject(o, "p90_ms", d.p90 * 1e3);
    cJSON_AddNumberToObject(o, "p99_ms", d.p99 * 1e3);
    cJSON_AddNumberToObject(o, "count", d.n);
}

int client_load(const load_opts *o) {
    int n = o->requests;
    load_req *r = calloc((size_t)n, sizeof *r);
    pthread_t *th = calloc((size_t)n, sizeof *th);
    if (!r || !th) abort();
    uint64_t rng = o->seed;
    double t = 0.0;
    for (int i = 0; i < n; i++) {
        r[i].o = o;
        r[i].index = i;
        if (o->rate > 0 && i > 0) t += -log(1.0 - rng_uniform(&rng)) / o->rate; /* exponential gaps */
        r[i].t_start = t;
        r[i].ids = malloc(sizeof(int) * (size_t)o->in_len);
        if (!r[i].ids) abort();
        for (int k = 0; k < o->in_len; k++) r[i].ids[k] = (int)(rng_next(&rng) % (uint64_t)o->vocab);
    }
    double t0 = now_s();
    int started = 0;
    for (int i = 0; i < n; i++) {
        r[i].t0 = t0;
        if (pthread_create(&th[i], NULL, run_one, &r[i]) != 0) {
            snprintf(r[i].err, sizeof r[i].err, "pthread_create failed");
            break;
        }
        started++;
    }
    for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
    double wall = now_s() - t0;

    double *ttft = malloc(sizeof(double) * (size_t)n), *tpot = malloc(sizeof(double) * (size_t)n);
    int n_ok = 0, n_tpot = 0, n_itl = 0;
    long tokens = 0;
    for (int i = 0; i < n; i++) n_itl += r[i].n_itl;
    double *itl = malloc(sizeof(double) * (size_t)(n_itl + 1));
    if (!ttft || !tpot || !itl) abort();
    n_itl = 0;
    for (int i = 0; i < n; i++) {
        if (!r[i].ok) {
            fprintf(stderr, "glmtp-client: load request %d failed: %s\n", i, r[i].err[0] ? r[i].err : "no reply");
            continue;
        }
        n_ok++;
        tokens += r[i].n_tokens;
        if (r[i].n_tokens > 0) ttft[n_ok - 1] = r[i].t_first - r[i].t_send;
        if (r[i].n_tokens > 1) tpot[n_tpot++] = (r[i].t_last - r[i].t_first) / (r[i].n_tokens - 1);
        for (int k = 0; k < r[i].n_itl; k++) itl[n_itl++] = r[i].itl[k];
    }
    dist dt = summarise(ttft, n_ok), dp = summarise(tpot, n_tpot), di = summarise(itl, n_itl);
    printf("# glmtp-client --load: %s, %d requests, rate %s, input %d, output %d tokens\n", o->addr, n,
           o->rate > 0 ? "Poisson" : "all at once", o->in_len, o->out_len);
    printf("%-22s %10s %10s %10s %10s\n", "metric", "mean", "p50", "p90", "p99");
    printf("%-22s %10s %10s %10s %10s\n", "", "(ms)", "(ms)", "(ms)", "(ms)");
    printf("%-22s %10.2f %10.2f %10.2f %10.2f\n", "time to first token", dt.mean * 1e3, dt.p50 * 1e3, dt.p90 * 1e3,
           dt.p99 * 1e3);
    printf("%-22s %10.2f %10.2f %10.2f %10.2f\n", "time per output token", dp.mean * 1e3, dp.p50 * 1e3,
           dp.p90 * 1e3, dp.p99 * 1e3);
    printf("%-22s %10.2f %10.2f %10.2f %10.2f\n", "inter-token latency", di.mean * 1e3, di.p50 * 1e3, di.p90 * 1e3,
           di.p99 * 1e3);
    printf("# completed %d/%d in %.3f s: %.2f requests/s, %.2f output tokens/s, %.2f total tokens/s\n", n_ok, n, wall,
           n_ok / wall, tokens / wall, (tokens + (double)n_ok * o->in_len) / wall);
    int rc = n_ok == n ? 0 : 1;
    if (o->json) {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddNumberToObject(j, "requests", n);
        cJSON_AddNumberToObject(j, "completed", n_ok);
        cJSON_AddNumberToObject(j, "rate", o->rate);
        cJSON_AddNumberToObject(j, "input_len", o->in_len);
        cJSON_AddNumberToObject(j, "output_len", o->out_len);
        cJSON_AddNumberToObject(j, "seconds", wall);
        cJSON_AddNumberToObject(j, "requests_per_s", n_ok / wall);
        cJSON_AddNumberToObject(j, "output_tokens_per_s", tokens / wall);
        cJSON_AddNumberToObject(j, "total_tokens_per_s", (tokens + (double)n_ok * o->in_len) / wall);
        add_dist(j, "ttft", dt);
        add_dist(j, "tpot", dp);
        add_dist(j, "itl", di);
        char *s = cJSON_Print(j);
        FILE *f = fopen(o->json, "w");
        if (!f || fprintf(f, "%s\n", s) < 0 || fclose(f) != 0) {
            fprintf(stderr, "glmtp-client: --json %s: cannot write\n", o->json);
            rc = 1;
        }
        free(s);
        cJSON_Delete(j);
    }
    for (int i = 0; i < n; i++) {
        free(r[i].ids);
        free(r[i].itl);
    }
    free(r);
    free(th);
    free(ttft);
    free(tpot);
    free(itl);
    return rc;
}
