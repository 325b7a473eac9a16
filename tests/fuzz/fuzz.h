/* fuzz.h: what every harness in tests/fuzz/ shares.
 *
 * A harness defines LLVMFuzzerTestOneInput (and LLVMFuzzerInitialize when it
 * needs set-up). Built with -DGLMTP_FUZZ=ON, libFuzzer supplies main(); in the
 * normal build fuzz_main.c does, replaying files (the regression ctests).
 *
 * Global state: a harness may keep what its LLVMFuzzerInitialize loads (the
 * tokenizer, a scratch directory) in file-level statics; nothing else. */
#ifndef GLMTP_FUZZ_H
#define GLMTP_FUZZ_H

#include <stddef.h>
#include <stdint.h>

#include "../../coordinator/text/tokenizer.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A scratch directory made on first use and removed (with the files
 * fuzz_write put there) at exit. The string is owned here. */
const char *fuzz_tmpdir(void);

/* Writes size bytes to NAME inside fuzz_tmpdir() (replacing it) and returns
 * the full path (owned here, valid until the next call). Aborts on I/O errors:
 * a harness that cannot write its input has nothing to test. */
const char *fuzz_write(const char *name, const uint8_t *data, size_t size);

/* The real GLM-4 vocabulary (tests/data/glm4-tokenizer/tokenizer.model, or
 * $GLMTP_FUZZ_VOCAB), loaded on first use and kept for the process; aborts
 * when it cannot be loaded. */
const tokenizer *fuzz_tokenizer(void);

/* Aborts with a message naming the broken property (a finding, not a bad input). */
#define FUZZ_CHECK(cond, what)                                                                  \
    do {                                                                                        \
        if (!(cond)) fuzz_fail(__FILE__, __LINE__, #cond, what);                                \
    } while (0)
void fuzz_fail(const char *file, int line, const char *cond, const char *what) __attribute__((noreturn));

#endif
