#include "args.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const args_opt args_log_opts[] = {
    {"--log-level", "error|warn|info|debug",
     "what goes to stderr (default info; rank 0 speaks for all ranks, other ranks' start-up lines need debug)"},
    {"--quiet", NULL, "same as --log-level warn: results and errors only"},
    {"--version", NULL, "print the version and exit"},
    {"--help", NULL, "print this help and exit"},
    {NULL, NULL, NULL},
};

const args_opt args_engine_opts[] = {
    {"--threads", "N", "CPU threads per rank (default: OMP_NUM_THREADS, else the cores the rank may run on; mpirun -np 2 binds each rank to one core unless given --bind-to none)"},
    {"--device", "cpu|cuda", "where each rank computes (cuda: the GPU of its node-local rank, bf16; default cpu)"},
    {"--comm", "mpi|nccl", "GPU all-reduce (default nccl with more than one rank; mpi lets ranks share a GPU)"},
    {"--block-size", "B", "KV cache block, in tokens (default 16)"},
    {"--kv-tokens", "N", "KV pool in tokens (default: sized from GPU memory; on CPU 65536, generate: what the batch needs)"},
    {"--gpu-memory-utilization", "F", "share of each GPU's memory for weights, KV and activations (default 0.90)"},
    {"--kv-cache-dtype", "bf16|fp8", ARGS_KV_DTYPE_HELP},
    {NULL, NULL, NULL},
};

void args_init(args *a, const args_spec *spec, int argc, char **argv) {
    memset(a, 0, sizeof *a);
    a->argc = argc;
    a->argv = argv;
    a->spec = spec;
    a->used = calloc((size_t)argc + 1, 1);
    if (!a->used) abort();
}

void args_free(args *a) { free(a->used); }

static void fail(args *a, const char *fmt, const char *name, const char *val) {
    if (a->failed) return;
    a->failed = 1;
    snprintf(a->err, sizeof a->err, fmt, name, val);
}

int args_kv_dtype(args *a) {
    const char *v = args_str(a, "--kv-cache-dtype", "bf16");
    if (strcmp(v, "bf16") == 0) return 0;
    if (strcmp(v, "fp8") == 0) return 1;
    fail(a, "option %s takes bf16 or fp8, not '%s'", "--kv-cache-dtype", v);
    return 0;
}

static const args_opt *spec_find(const args_spec *spec, const char *name) {
    for (int g = 0; spec && spec->groups[g]; g++)
        for (const args_opt *o = spec->groups[g]; o->name; o++)
            if (strcmp(o->name, name) == 0) return o;
    return NULL;
}

/* A read of an option the help table lacks is the programmer's error. */
static void check_declared(const args *a, const char *name) {
    if (!a->spec || spec_find(a->spec, name)) return;
    fprintf(stderr, "%s: internal error: option %s is read but missing from the command's option table\n",
            a->spec->cmd, name);
    abort();
}

/* First unconsumed occurrence of name at or after from. */
static int find_from(args *a, const char *name, int from) {
    check_declared(a, name);
    for (int i = from; i < a->argc; i++)
        if (a->used[i] != 2 && strcmp(a->argv[i], name) == 0) return i;
    return -1;
}

static int find(args *a, const char *name) { return find_from(a, name, 0); }

const char *args_str(args *a, const char *name, const char *def) {
    int i = find(a, name);
    if (i < 0) return def;
    a->used[i] = 1;
    if (i + 1 >= a->argc) {
        fail(a, "option %s needs a value%s", name, "");
        return def;
    }
    a->used[i + 1] = 2; /* a value: never itself an option */
    return a->argv[i + 1];
}

int args_strs(args *a, const char *name, const char ***out) {
    *out = NULL;
    int n = 0;
    for (int i = find(a, name); i >= 0; i = find_from(a, name, i + 2)) {
        a->used[i] = 1;
        if (i + 1 >= a->argc) {
            fail(a, "option %s needs a value%s", name, "");
            break;
        }
        a->used[i + 1] = 2;
        const char **v = realloc(*out, sizeof *v * (size_t)(n + 1));
        if (!v) abort();
        v[n++] = a->argv[i + 1];
        *out = v;
    }
    return n;
}

long args_int(args *a, const char *name, long def, long min, long max) {
    const char *s = args_str(a, name, NULL);
    if (!s) return def;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < min || v > max) {
        char m[160];
        snprintf(m, sizeof m, "option %%s: '%%s' is not an integer in [%ld, %ld]", min, max);
        fail(a, m, name, s);
        return def;
    }
    return v;
}

double args_num(args *a, const char *name, double def, double min, double max) {
    const char *s = args_str(a, name, NULL);
    if (!s) return def;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || end == s || !(v >= min && v <= max)) {
        char m[160];
        snprintf(m, sizeof m, "option %%s: '%%s' is not a number in [%g, %g]", min, max);
        fail(a, m, name, s);
        return def;
    }
    return v;
}

int args_flag(args *a, const char *name) {
    int i = find(a, name);
    if (i < 0) return 0;
    a->used[i] = 1;
    return 1;
}

int args_finish(args *a) {
    if (a->failed) return -1;
    for (int i = 0; i < a->argc; i++) {
        if (!a->used[i]) {
            fail(a, "unknown option or stray argument '%s'%s", a->argv[i], "");
            return -1;
        }
    }
    return 0;
}

int args_int_list(args *a, const char *name, const char *text, int **out, int *n) {
    int cap = 16, cnt = 0;
    int *v = malloc(sizeof(int) * cap);
    if (!v) abort();
    const char *p = text;
    while (*p) {
        char *end;
        errno = 0;
        long x = strtol(p, &end, 10);
        if (errno || end == p || x < 0 || x > 2147483647L || (*end && *end != ',')) {
            fail(a, "option %s: '%s' is not a comma-separated list of non-negative integers", name, text);
            free(v);
            return -1;
        }
        if (cnt == cap) {
            int *nv = realloc(v, sizeof(int) * (cap *= 2));
            if (!nv) abort();
            v = nv;
        }
        v[cnt++] = (int)x;
        p = *end ? end + 1 : end;
    }
    if (cnt == 0) {
        fail(a, "option %s: empty list%s", name, "");
        free(v);
        return -1;
    }
    *out = v;
    *n = cnt;
    return 0;
}

int args_wants_help(int argc, char **argv) {
    for (int i = 0; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) return 1;
    return 0;
}

void args_print_help(const args_spec *spec, FILE *f) {
    fprintf(f, "usage: %s %s\n", spec->cmd, spec->synopsis);
    if (spec->about) fprintf(f, "\n%s\n", spec->about);
    fprintf(f, "\noptions:\n");
    for (int g = 0; spec->groups[g]; g++) {
        if (g) fprintf(f, "\n");
        for (const args_opt *o = spec->groups[g]; o->name; o++) {
            char head[96];
            snprintf(head, sizeof head, "%s%s%s", o->name, o->value ? " " : "", o->value ? o->value : "");
            if (strlen(head) <= 28)
                fprintf(f, "  %-28s %s\n", head, o->help);
            else
                fprintf(f, "  %s\n  %-28s %s\n", head, "", o->help);
        }
    }
    if (spec->footer) fprintf(f, "\n%s", spec->footer);
}
