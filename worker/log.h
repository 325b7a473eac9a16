/* log.h: what glmtp writes to stderr, and which rank writes it.
 *
 * One logger object per process (log.c), set once by main() from
 * --log-level / --quiet and, once MPI is up, this rank's number: the only
 * process-wide mutable state besides the communicator. Levels: error (always
 * shown), warn (--quiet), info (default), debug. Rank 0 speaks for the job:
 * other ranks' info lines show only at debug, and an error that every rank
 * agrees on is printed by rank 0 alone. Every line is "glmtp: [rank r: ]msg",
 * written in one call so that ranks' lines never interleave mid-line. */
#ifndef GLMTP_LOG_H
#define GLMTP_LOG_H

typedef enum log_level { LOG_ERROR = 0, LOG_WARN = 1, LOG_INFO = 2, LOG_DEBUG = 3 } log_level;

/* "error", "warn", "info", "debug" -> 0 and *out; -1 for anything else. */
int log_parse_level(const char *name, log_level *out /* OUT */);
void log_set_level(log_level level);
log_level log_get_level(void);
/* This rank and the job's size (size 1: no "rank r:" prefixes). */
void log_set_rank(int rank, int size);
/* Whether a message at this level would be printed by this rank. */
int log_enabled(log_level level);

/* A line at this level, with "rank r:" when the job has several ranks; info
 * lines of ranks other than 0 are printed at debug level only. */
void log_msg(log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* An error every rank has (same arguments, same file): rank 0 prints it, with
 * no rank prefix; the other ranks print nothing. */
void log_error_agreed(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Removes --log-level X and --quiet from argv (shifting the rest, updating
 * *argc) and sets the level. Returns 0, or -1 with err naming a bad level. */
int log_take_args(int *argc, char **argv, char *err, unsigned errlen);

#endif
