/* Helpers shared by the harnesses (see fuzz.h). The scratch directory's name
 * and the loaded tokenizer are the only globals: set once, kept until exit. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz.h"

#ifndef GLMTP_FUZZ_VOCAB
#define GLMTP_FUZZ_VOCAB "tests/data/glm4-tokenizer/tokenizer.model"
#endif

static char tmp_dir[4096];
static char tmp_path[4096 + 256];
static tokenizer *tok;

void fuzz_fail(const char *file, int line, const char *cond, const char *what) {
    fprintf(stderr, "%s:%d: fuzz check failed: %s (%s)\n", file, line, what, cond);
    abort();
}

/* Removes the scratch directory and whatever the harness wrote in it. */
static void remove_tmpdir(void) {
    DIR *d = opendir(tmp_dir);
    if (d) {
        char p[sizeof tmp_dir + 256];
        for (struct dirent *e; (e = readdir(d)) != NULL;) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
            snprintf(p, sizeof p, "%s/%s", tmp_dir, e->d_name);
            unlink(p);
        }
        closedir(d);
    }
    rmdir(tmp_dir);
}

static void free_tokenizer(void) { tok_free(tok); }

const char *fuzz_tmpdir(void) {
    if (tmp_dir[0]) return tmp_dir;
    const char *base = getenv("TMPDIR");
    snprintf(tmp_dir, sizeof tmp_dir, "%s/glmtp-fuzz-XXXXXX", base && base[0] ? base : "/tmp");
    if (!mkdtemp(tmp_dir)) {
        perror("fuzz: mkdtemp");
        abort();
    }
    atexit(remove_tmpdir);
    return tmp_dir;
}

const char *fuzz_write(const char *name, const uint8_t *data, size_t size) {
    snprintf(tmp_path, sizeof tmp_path, "%s/%s", fuzz_tmpdir(), name);
    FILE *f = fopen(tmp_path, "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size) || fclose(f) != 0) {
        perror(tmp_path);
        abort();
    }
    return tmp_path;
}

const tokenizer *fuzz_tokenizer(void) {
    if (tok) return tok;
    const char *path = getenv("GLMTP_FUZZ_VOCAB");
    char err[512];
    if (!path || !path[0]) path = GLMTP_FUZZ_VOCAB;
    if (tok_load(&tok, path, err, sizeof err)) {
        fprintf(stderr, "fuzz: %s\n", err);
        abort();
    }
    atexit(free_tokenizer);
    return tok;
}
