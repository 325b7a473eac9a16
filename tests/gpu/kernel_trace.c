/* kernel_trace: per-kernel GPU time of any CUDA program, CUDA graphs
 * included, without Nsight Compute or hardware counters (which gVisor
 * machines refuse): a CUPTI activity tracer loaded by the CUDA driver.
 *
 *   CUDA_INJECTION64_PATH=build/tests/libglmtp_kernel_trace.so \
 *   GLMTP_TRACE_OUT=trace.json glmtp bench decode ...
 *
 * At exit it writes GLMTP_TRACE_OUT (default kernel-trace.json): for every
 * kernel name and grid, the launches and their total time in ns, plus the
 * span from the first start to the last end. tests/gpu/kernel_times.py
 * --trace turns it into a per-step table. The driver calls
 * InitializeInjection once, at its own initialisation. */
#include <cupti.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TRACE_BUF_BYTES ((size_t)8 << 20)
#define TRACE_MAX_GROUPS 4096

typedef struct group {
    char *name;
    int grid[3];
    long calls;
    unsigned long long ns;
} group;

/* The one tracer of the process (the driver gives its callbacks no user pointer). */
static struct {
    group g[TRACE_MAX_GROUPS];
    int n, overflow;
    unsigned long long first, last;
    long records;
} T;

static void cupti_warn(CUptiResult r, const char *what) {
    if (r == CUPTI_SUCCESS) return;
    const char *s = NULL;
    cuptiGetResultString(r, &s);
    fprintf(stderr, "kernel_trace: %s: %s\n", what, s ? s : "unknown CUPTI error");
}

static void add(const char *name, const int grid[3], unsigned long long start, unsigned long long end) {
    T.records++;
    if (!T.first || start < T.first) T.first = start;
    if (end > T.last) T.last = end;
    for (int i = 0; i < T.n; i++)
        if (!memcmp(T.g[i].grid, grid, sizeof T.g[i].grid) && !strcmp(T.g[i].name, name)) {
            T.g[i].calls++, T.g[i].ns += end - start;
            return;
        }
    if (T.n == TRACE_MAX_GROUPS) {
        T.overflow++;
        return;
    }
    group *g = &T.g[T.n];
    g->name = strdup(name ? name : "?");
    if (!g->name) return;
    memcpy(g->grid, grid, sizeof g->grid);
    g->calls = 1, g->ns = end - start;
    T.n++;
}

static void CUPTIAPI buffer_requested(uint8_t **buffer, size_t *size, size_t *max_records) {
    *buffer = aligned_alloc(8, TRACE_BUF_BYTES);
    *size = *buffer ? TRACE_BUF_BYTES : 0;
    *max_records = 0;
}

static void CUPTIAPI buffer_completed(CUcontext ctx, uint32_t stream, uint8_t *buffer, size_t size, size_t valid) {
    (void)ctx, (void)stream, (void)size;
    CUpti_Activity *rec = NULL;
    while (cuptiActivityGetNextRecord(buffer, valid, &rec) == CUPTI_SUCCESS)
        if (rec->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL || rec->kind == CUPTI_ACTIVITY_KIND_KERNEL) {
            const CUpti_ActivityKernel10 *k = (const CUpti_ActivityKernel10 *)rec;
            int grid[3] = {k->gridX, k->gridY, k->gridZ};
            add(k->name, grid, k->start, k->end);
        }
    free(buffer);
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
    const char *path = getenv("GLMTP_TRACE_OUT");
    if (!path || !*path) path = "kernel-trace.json";
    FILE *f = fopen(path, "w");
    if (!f) {
        perror(path);
        return;
    }
    size_t dropped = 0;
    cuptiActivityGetNumDroppedRecords(NULL, 0, &dropped);
    fprintf(f, "{\"records\": %ld, \"dropped\": %zu, \"groups_over_limit\": %d, \"span_ns\": %llu, \"kernels\": [",
            T.records, dropped, T.overflow, T.last > T.first ? T.last - T.first : 0ull);
    for (int i = 0; i < T.n; i++) {
        fprintf(f, "%s\n {\"name\": ", i ? "," : "");
        put_name(f, T.g[i].name);
        fprintf(f, ", \"grid\": [%d, %d, %d], \"calls\": %ld, \"ns\": %llu}", T.g[i].grid[0], T.g[i].grid[1],
                T.g[i].grid[2], T.g[i].calls, T.g[i].ns);
    }
    fprintf(f, "\n]}\n");
    if (fclose(f) != 0) perror(path);
}

int InitializeInjection(void) {
    cupti_warn(cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed), "register callbacks");
    cupti_warn(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL), "enable kernel records");
    if (atexit(finish) != 0) fprintf(stderr, "kernel_trace: atexit failed; no trace will be written\n");
    return 1;
}
