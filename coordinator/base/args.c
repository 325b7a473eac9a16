#include "args.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void args_init(args *a, int argc, char **argv) {
    memset(a, 0, sizeof *a);
    a->argc = argc;
    a->argv = argv;
    a->used = calloc((size_t)argc + 1, 1);
    if (!a->used) abort();
}

void args_free(args *a) { free(a->used); }

static void fail(args *a, const char *fmt, const char *name, const char *val) {
    if (a->failed) return;
    a->failed = 1;
    snprintf(a->err, sizeof a->err, fmt, name, val);
}

static int find(args *a, const char *name) {
    for (int i = 0; i < a->argc; i++)
        if (strcmp(a->argv[i], name) == 0) return i;
    return -1;
}

const char *args_str(args *a, const char *name, const char *def) {
    int i = find(a, name);
    if (i < 0) return def;
    a->used[i] = 1;
    if (i + 1 >= a->argc) {
        fail(a, "option %s needs a value%s", name, "");
        return def;
    }
    a->used[i + 1] = 1;
    return a->argv[i + 1];
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
