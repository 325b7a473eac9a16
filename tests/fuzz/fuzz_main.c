/* A main() for the harnesses when they are not built with libFuzzer: replays
 * every file named on the command line (a directory: every file in it, in
 * name order) through LLVMFuzzerTestOneInput, once each. The regression
 * ctests run it over tests/fuzz/regressions/<target>/ and the seed corpus
 * under ASan + UBSan, so each crash the fuzzer found stays fixed. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz.h"

/* Replays one file. Returns 0, or -1 when it cannot be read. */
static int replay(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return -1;
    }
    size_t cap = 1 << 16, n = 0, k;
    uint8_t *buf = malloc(cap);
    if (!buf) abort();
    while ((k = fread(buf + n, 1, cap - n, f)) > 0) {
        n += k;
        if (n == cap && !(buf = realloc(buf, cap *= 2))) abort();
    }
    fclose(f);
    /* An exact-size copy, so ASan sees a read past the input's end. */
    uint8_t *in = malloc(n ? n : 1);
    if (!in) abort();
    memcpy(in, buf, n);
    free(buf);
    LLVMFuzzerTestOneInput(in, n);
    free(in);
    return 0;
}

static int by_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Replays the files of a directory in name order; returns how many, or -1. */
static int replay_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) {
        perror(dir);
        return -1;
    }
    char **names = NULL;
    int n = 0, rc = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        if (e->d_name[0] == '.') continue; /* ., .., .gitkeep */
        if (!(names = realloc(names, sizeof *names * (size_t)(n + 1))) || !(names[n] = strdup(e->d_name))) abort();
        n++;
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof *names, by_name);
    char path[8192];
    for (int i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        if (replay(path)) rc = -1;
        free(names[i]);
    }
    free(names);
    return rc ? -1 : n;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE|DIR...   (replays each input through the harness)\n", argv[0]);
        return 2;
    }
    LLVMFuzzerInitialize(&argc, &argv);
    int total = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        int n = stat(argv[i], &st) == 0 && S_ISDIR(st.st_mode) ? replay_dir(argv[i]) : (replay(argv[i]) ? -1 : 1);
        if (n < 0) return 1;
        total += n;
    }
    printf("%s: %d inputs replayed, no crash\n", argv[0], total);
    return 0;
}
