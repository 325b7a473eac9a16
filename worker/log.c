/* The process's logger (see log.h). */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* The one logger of this process: set by main() before any rank work starts,
 * read everywhere after (no locking: the serve threads only read it). */
static struct {
    log_level level;
    int rank, size;
} the_log = {LOG_INFO, 0, 1};

static const char *const level_names[] = {"error", "warn", "info", "debug"};

int log_parse_level(const char *name, log_level *out) {
    for (int i = 0; i < 4; i++)
        if (strcmp(name, level_names[i]) == 0) {
            *out = (log_level)i;
            return 0;
        }
    return -1;
}

void log_set_level(log_level level) { the_log.level = level; }
log_level log_get_level(void) { return the_log.level; }

void log_set_rank(int rank, int size) {
    the_log.rank = rank;
    the_log.size = size;
}

int log_enabled(log_level level) {
    if (level == LOG_INFO && the_log.rank != 0) level = LOG_DEBUG;
    return level <= the_log.level;
}

static void vprint(int with_rank, const char *fmt, va_list ap) {
    char msg[4096];
    int k = with_rank && the_log.size > 1 ? snprintf(msg, sizeof msg, "glmtp: rank %d: ", the_log.rank)
                                          : snprintf(msg, sizeof msg, "glmtp: ");
    vsnprintf(msg + k, sizeof msg - (size_t)k, fmt, ap);
    size_t n = strlen(msg);
    if (n + 1 < sizeof msg) msg[n++] = '\n';
    else msg[n - 1] = '\n';
    fwrite(msg, 1, n, stderr); /* one write: ranks' lines stay whole */
}

void log_msg(log_level level, const char *fmt, ...) {
    if (!log_enabled(level)) return;
    va_list ap;
    va_start(ap, fmt);
    vprint(1, fmt, ap);
    va_end(ap);
}

void log_error_agreed(const char *fmt, ...) {
    if (the_log.rank != 0) return;
    va_list ap;
    va_start(ap, fmt);
    vprint(0, fmt, ap);
    va_end(ap);
}

int log_take_args(int *argc, char **argv, char *err, unsigned errlen) {
    int out = 0, rc = 0;
    for (int i = 0; i < *argc; i++) {
        if (strcmp(argv[i], "--quiet") == 0) {
            the_log.level = LOG_WARN;
            continue;
        }
        if (strcmp(argv[i], "--log-level") == 0) {
            log_level l;
            if (i + 1 >= *argc || log_parse_level(argv[i + 1], &l)) {
                if (!rc)
                    snprintf(err, errlen, "--log-level: '%s' is not one of error, warn, info, debug",
                             i + 1 < *argc ? argv[i + 1] : "");
                rc = -1;
            } else {
                the_log.level = l;
            }
            i++;
            continue;
        }
        argv[out++] = argv[i];
    }
    for (int i = out; i < *argc; i++) argv[i] = NULL;
    *argc = out;
    return rc;
}
