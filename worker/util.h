/* Small helpers used across worker/ and coordinator/: file reading, hashing. */
#ifndef GLMTP_UTIL_H
#define GLMTP_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* Reads a whole file, NUL-terminated; the caller frees. NULL and err on failure. */
char *util_read_file(const char *path, size_t *len /* OUT */, char *err, size_t errlen);

/* FNV-1a over bytes, continuing from h (start with UTIL_FNV_INIT). */
#define UTIL_FNV_INIT 1469598103934665603ull
uint64_t util_fnv(uint64_t h, const void *data, size_t n);

/* Whether given equals secret, in a time that depends on the lengths only, not
 * on how much of a guess is right (auth tokens, API keys). */
int util_secret_equal(const char *given, const char *secret);

/* Monotonic seconds. */
double util_now(void);

#endif
