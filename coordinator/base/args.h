/* args.h: command-line options of the form --name value / --flag.
 * Every option a command reads is declared; anything else is an error naming
 * the option, so a typo never silently falls back to a default. */
#ifndef GLMTP_ARGS_H
#define GLMTP_ARGS_H

#include <stddef.h>

typedef struct args {
    int argc;
    char **argv;
    unsigned char *used; /* which argv entries were consumed */
    char err[512];
    int failed;
} args;

void args_init(args *a, int argc, char **argv);
void args_free(args *a);
/* Value of --name, or def when absent. */
const char *args_str(args *a, const char *name, const char *def);
long args_int(args *a, const char *name, long def, long min, long max);
double args_num(args *a, const char *name, double def, double min, double max);
int args_flag(args *a, const char *name);
/* After reading every option: 0, or -1 with err naming the first unknown one. */
int args_finish(args *a);
/* Parses "1,2,3" into a malloc'ed array; -1 and err on junk. */
int args_int_list(args *a, const char *name, const char *text, int **out, int *n);

#endif
