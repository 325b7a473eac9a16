/* kernel_trace: per-kernel GPU time of any CUDA program, CUDA graphs
 * included, without Nsight Compute or hardware counters (which gVisor
 * machines refuse): a CUPTI activity tracer loaded by the CUDA driver.
 *
 *   CUDA_INJECTION64_PATH=build/tests/libglmtp_kernel_trace.so \
 *   GLMTP_TRACE_OUT=trace-%p.json glmtp bench decode ...
 *
 * At exit it writes GLMTP_TRACE_OUT (default kernel-trace.json; %p becomes
 * the pid, one file per rank under mpirun): for every kernel name and grid,
 * the launches and their total time in ns, and the same counted only inside
 * the program's timed windows (cudaProfilerStart .. cudaProfilerStop; glmtp
 * bench brackets its timed steps so, after a sync), with the time in those
 * windows when some kernel ran (overlaps counted once). tests/gpu/
 * kernel_times.py --trace turns it into a per-step table. The driver calls
 * InitializeInjection once, at its own initialisation; a CUPTI call that
 * fails is reported on stderr and in the file ("errors"). */
#include <cupti.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TRACE_BUF_BYTES ((size_t)8 << 20)
#define TRACE_MAX_GROUPS 4096
#define TRACE_MAX_WINDOWS 64

typedef struct group {
    char *name;
    int grid[3];
    long calls, win_calls;
    unsigned long long ns, win_ns;
} group;
typedef struct span {
    unsigned long long start, end;
    int g;
} span;

static struct {
    pthread_mutex_t mu;
    group g[TRACE_MAX_GROUPS];
    int n, overflow;
    unsigned long long first, last;
    long records, no_ts, graph;
    span *s; /* every timed kernel, classified against the windows at exit */
    size_t ns, cap;
    unsigned long long win[TRACE_MAX_WINDOWS][2];
    int nwin, win_open;
    int errors;           /* CUPTI calls that failed */
    char first_error[200];
} T = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void cupti_warn(CUptiResult r, const char *what) {
    if (r == CUPTI_SUCCESS) return;
    const char *s = NULL;
    cuptiGetResultString(r, &s);
    fprintf(stderr, "kernel_trace: %s: %s\n", what, s ? s : "unknown CUPTI error");
    if (!T.errors++) snprintf(T.first_error, sizeof T.first_error, "%s: %s", what, s ? s : "unknown CUPTI error");
}

static int group_of(const char *name, const int grid[3]) {
    for (int i = 0; i < T.n; i++)
        if (!memcmp(T.g[i].grid, grid, sizeof T.g[i].grid) && !strcmp(T.g[i].name, name)) return i;
    if (T.n == TRACE_MAX_GROUPS) return -1;
    group *g = &T.g[T.n];
    if (!(g->name = strdup(name))) return -1;
    memcpy(g->grid, grid, sizeof g->grid);
    return T.n++;
}

static void add(const char *name, const int grid[3], unsigned long long start, unsigned long long end, int graph) {
    T.records++;
    if (graph) T.graph++;
    if (!start || end < start) { /* no timestamps (CUPTI's device buffer ran out, or an unfinished record) */
        T.no_ts++;
        return;
    }
    if (!T.first || start < T.first) T.first = start;
    if (end > T.last) T.last = end;
    int i = group_of(name ? name : "?", grid);
    if (i < 0) {
        T.overflow++;
        return;
    }
    T.g[i].calls++, T.g[i].ns += end - start;
    if (T.ns == T.cap) {
        size_t cap = T.cap ? 2 * T.cap : 65536;
        span *s = realloc(T.s, cap * sizeof *s);
        if (!s) return;
        T.s = s, T.cap = cap;
    }
    T.s[T.ns++] = (span){start, end, i};
}

static void CUPTIAPI buffer_requested(uint8_t **buffer, size_t *size, size_t *max_records) {
    *buffer = aligned_alloc(8, TRACE_BUF_BYTES);
    *size = *buffer ? TRACE_BUF_BYTES : 0;
    *max_records = 0;
}

static void CUPTIAPI buffer_completed(CUcontext ctx, uint32_t stream, uint8_t *buffer, size_t size, size_t valid) {
    (void)ctx, (void)stream, (void)size;
    CUpti_Activity *rec = NULL;
    pthread_mutex_lock(&T.mu);
    while (cuptiActivityGetNextRecord(buffer, valid, &rec) == CUPTI_SUCCESS)
        if (rec->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL || rec->kind == CUPTI_ACTIVITY_KIND_KERNEL) {
            /* start, end, grid and name sit at the same offsets in Kernel4..Kernel10 */
            const CUpti_ActivityKernel10 *k = (const CUpti_ActivityKernel10 *)rec;
            int grid[3] = {k->gridX, k->gridY, k->gridZ};
            add(k->name, grid, k->start, k->end, k->graphId != 0);
        }
    pthread_mutex_unlock(&T.mu);
    free(buffer);
}

/* cudaProfilerStart/Stop (cuProfilerStart/Stop) bracket the timed region: the
 * program syncs before both, so a kernel belongs to it iff it starts inside. */
static void CUPTIAPI on_api(void *user, CUpti_CallbackDomain dom, CUpti_CallbackId cbid, const void *data) {
    (void)user;
    const CUpti_CallbackData *d = data;
    if (dom != CUPTI_CB_DOMAIN_DRIVER_API || d->callbackSite != CUPTI_API_ENTER) return;
    uint64_t now = 0;
    cuptiGetTimestamp(&now);
    pthread_mutex_lock(&T.mu);
    if (cbid == CUPTI_DRIVER_TRACE_CBID_cuProfilerStart && !T.win_open && T.nwin < TRACE_MAX_WINDOWS)
        T.win[T.nwin][0] = now, T.win_open = 1;
    else if (cbid == CUPTI_DRIVER_TRACE_CBID_cuProfilerStop && T.win_open)
        T.win[T.nwin++][1] = now, T.win_open = 0;
    pthread_mutex_unlock(&T.mu);
}

static int by_start(const void *a, const void *b) {
    const span *x = a, *y = b;
    return x->start < y->start ? -1 : x->start > y->start;
}

/* Kernel names are mangled C++ identifiers: [A-Za-z0-9_$.]; anything else is
 * written as '?', so the JSON needs no escapes. */
static void put_name(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) fputc((*s >= 32 && *s < 127 && *s != '"' && *s != '\\') ? *s : '?', f);
    fputc('"', f);
}

static void finish(void) {
    cupti_warn(cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED), "flush");
    pthread_mutex_lock(&T.mu);
    /* GLMTP_TRACE_OUT may hold %p (the pid): one file per process under mpirun. */
    const char *env = getenv("GLMTP_TRACE_OUT"), *pp;
    char path[4096];
    if (!env || !*env) env = "kernel-trace.json";
    if ((pp = strstr(env, "%p")))
        snprintf(path, sizeof path, "%.*s%ld%s", (int)(pp - env), env, (long)getpid(), pp + 2);
    else
        snprintf(path, sizeof path, "%s", env);
    unsigned long long win_ns = 0, busy = 0, cur_s = 0, cur_e = 0;
    for (int w = 0; w < T.nwin; w++) win_ns += T.win[w][1] - T.win[w][0];
    qsort(T.s, T.ns, sizeof *T.s, by_start);
    for (size_t i = 0; i < T.ns; i++) {
        int in = 0;
        for (int w = 0; w < T.nwin && !in; w++) in = T.s[i].start >= T.win[w][0] && T.s[i].start < T.win[w][1];
        if (!in) continue;
        T.g[T.s[i].g].win_calls++, T.g[T.s[i].g].win_ns += T.s[i].end - T.s[i].start;
        if (T.s[i].start > cur_e) busy += cur_e - cur_s, cur_s = T.s[i].start, cur_e = T.s[i].end; /* union of intervals */
        else if (T.s[i].end > cur_e) cur_e = T.s[i].end;
    }
    busy += cur_e - cur_s;
    FILE *f = fopen(path, "w");
    if (!f) {
        perror(path);
        pthread_mutex_unlock(&T.mu);
        return;
    }
    size_t dropped = 0;
    cuptiActivityGetNumDroppedRecords(NULL, 0, &dropped);
    fprintf(f,
            "{\"records\": %ld, \"dropped\": %zu, \"no_timestamps\": %ld, \"graph_records\": %ld, "
            "\"groups_over_limit\": %d, \"span_ns\": %llu, \"windows\": %d, \"window_ns\": %llu, "
            "\"window_busy_ns\": %llu, \"errors\": %d, \"first_error\": ",
            T.records, dropped, T.no_ts, T.graph, T.overflow, T.last > T.first ? T.last - T.first : 0ull, T.nwin,
            win_ns, busy, T.errors);
    put_name(f, T.first_error);
    fprintf(f, ", \"kernels\": [");
    for (int i = 0; i < T.n; i++) {
        fprintf(f, "%s\n {\"name\": ", i ? "," : "");
        put_name(f, T.g[i].name);
        fprintf(f, ", \"grid\": [%d, %d, %d], \"calls\": %ld, \"ns\": %llu, \"window_calls\": %ld, \"window_ns\": %llu}",
                T.g[i].grid[0], T.g[i].grid[1], T.g[i].grid[2], T.g[i].calls, T.g[i].ns, T.g[i].win_calls,
                T.g[i].win_ns);
    }
    fprintf(f, "\n]}\n");
    if (fclose(f) != 0) perror(path);
    fprintf(stderr, "kernel_trace: %ld kernel records (%ld without timestamps, %ld from graphs), %d windows -> %s\n",
            T.records, T.no_ts, T.graph, T.nwin, path);
    pthread_mutex_unlock(&T.mu);
}

int InitializeInjection(void) {
    static int done;
    if (done++) return 1;
    CUpti_SubscriberHandle sub;
    cupti_warn(cuptiSubscribe(&sub, on_api, NULL), "subscribe");
    cupti_warn(cuptiEnableCallback(1, sub, CUPTI_CB_DOMAIN_DRIVER_API, CUPTI_DRIVER_TRACE_CBID_cuProfilerStart), "cb");
    cupti_warn(cuptiEnableCallback(1, sub, CUPTI_CB_DOMAIN_DRIVER_API, CUPTI_DRIVER_TRACE_CBID_cuProfilerStop), "cb");
    cupti_warn(cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed), "register callbacks");
    cupti_warn(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL), "enable kernel records");
    if (atexit(finish) != 0) fprintf(stderr, "kernel_trace: atexit failed; no trace will be written\n");
    fprintf(stderr, "kernel_trace: loaded (pid %ld)\n", (long)getpid());
    return 1;
}
