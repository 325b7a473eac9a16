/* args.h: command-line options of the form --name value / --flag.
 * Every command declares its options once, in an args_spec table: the parser
 * reads only names in the table (reading another is a programming error and
 * aborts, naming it) and `--help` prints the same table, so help and parser
 * cannot drift apart. Anything on the command line that no read consumed is an
 * error naming it, so a typo never silently falls back to a default. */
#ifndef GLMTP_ARGS_H
#define GLMTP_ARGS_H

#include <stdio.h>

/* One option: name ("--model"), value (metavariable, NULL for a flag), help
 * (one line; may say the default). A list ends with an entry whose name is NULL. */
typedef struct args_opt {
    const char *name, *value, *help;
} args_opt;

#define ARGS_MAX_GROUPS 4
/* One command: its name as typed ("glmtp generate"), a synopsis and a line on
 * what it does, then up to ARGS_MAX_GROUPS option lists (NULL-terminated
 * array; e.g. the command's own, then the engine options every rank reads). */
typedef struct args_spec {
    const char *cmd, *synopsis, *about;
    const args_opt *groups[ARGS_MAX_GROUPS + 1];
    const char *footer; /* NULL, or text printed after the options */
} args_spec;

/* Options every glmtp command takes (main.c reads them, see log.h). */
extern const args_opt args_log_opts[];
/* Options of the commands that load the model on every rank (engine_open). */
#define ARGS_KV_DTYPE_HELP                                                                                   \
    "KV cache element type (default bf16: the activations' type, which on the CPU is fp32; fp8: e4m3 with " \
    "an fp32 scale per token and KV head, 0.52x the bytes of bf16, so about twice the tokens fit)"
extern const args_opt args_engine_opts[];

typedef struct args {
    int argc;
    char **argv;
    const args_spec *spec; /* NULL: no table (an internal parse, e.g. args_int_list only) */
    unsigned char *used;   /* which argv entries were consumed */
    char err[512];
    int failed;
} args;

void args_init(args *a, const args_spec *spec, int argc, char **argv);
void args_free(args *a);
/* Value of --name, or def when absent. */
const char *args_str(args *a, const char *name, const char *def);
/* Every value of a repeatable --name, in order, as a malloc'ed array the caller
 * frees (the strings are argv's); returns their count (0: *out = NULL). */
int args_strs(args *a, const char *name, const char ***out);
long args_int(args *a, const char *name, long def, long min, long max);
double args_num(args *a, const char *name, double def, double min, double max);
int args_flag(args *a, const char *name);
/* After reading every option: 0, or -1 with err naming the first unknown one. */
int args_finish(args *a);
/* Parses "1,2,3" into a malloc'ed array; -1 and err on junk. */
int args_int_list(args *a, const char *name, const char *text, int **out, int *n);

/* --kv-cache-dtype (args_engine_opts; bench's table repeats it): 0 for
 * "bf16" or absent (the activations' type: bf16 on GPUs, fp32 on the CPU), 1
 * for "fp8" (kernels.h KV_DTYPE_ACT, KV_DTYPE_FP8); anything else fails. */
int args_kv_dtype(args *a);

/* 1 when argv holds --help or -h. */
int args_wants_help(int argc, char **argv);
/* The spec as help text: synopsis, about, every option of every group. */
void args_print_help(const args_spec *spec, FILE *f);

#endif
