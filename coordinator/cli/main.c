/* glmtp: tensor-parallel inference for the GLM-4-9B family.
 * One binary for every rank under mpirun; rank 0 coordinates and prints. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../worker/log.h"
#include "../base/commands.h"

#ifndef GLMTP_VERSION
#define GLMTP_VERSION "unknown"
#endif

typedef struct command {
    const char *name;
    const args_spec *spec;
    int (*local)(int, char **);        /* runs without MPI (make-model, tokenize) */
    int (*ranked)(comm *, int, char **); /* runs on every rank */
    double timeout_s;                    /* collective timeout unless set: 0 = comm's default (600 s) */
    int timeout_opt;                     /* 1: takes --collective-timeout S (listed in its spec) */
} command;

static const command commands[] = {
    {"make-model", &cmd_make_model_spec, cmd_make_model, NULL, 0, 0},
    {"generate", &cmd_generate_spec, NULL, cmd_generate, 0, 0},
    {"chat", &cmd_chat_spec, NULL, cmd_chat, 0, 0},
#ifdef GLMTP_HAVE_SERVE
    /* a server gives up on a dead or stalled rank sooner (vLLM's engine: 60 s without an iteration) */
    {"serve", &cmd_serve_spec, NULL, cmd_serve, 60.0, 1},
#endif
    {"score", &cmd_score_spec, NULL, cmd_score, 0, 0},
    {"tokenize", &cmd_tokenize_spec, cmd_tokenize, NULL, 0, 0},
    {"bench", &cmd_bench_spec, NULL, cmd_bench, 0, 0},
};
#define N_COMMANDS (int)(sizeof commands / sizeof commands[0])

static void usage(FILE *f) {
    fprintf(f, "usage: [mpirun -np N] glmtp COMMAND [options]    (glmtp COMMAND --help: all of its options)\n\n");
    for (int i = 0; i < N_COMMANDS; i++) {
        const args_spec *s = commands[i].spec;
        fprintf(f, "  %s %s\n", s->cmd, s->synopsis);
    }
#ifndef GLMTP_HAVE_SERVE
    fprintf(f, "  (serve and glmtp-client: not in this build, which has no protoc-c/libprotobuf-c)\n");
#else
    fprintf(f, "  glmtp-client --connect ADDR --prompt TEXT | --chat FILE | --ids 1,2,3 | --stats | --health |\n"
               "               --cancel ID | --load ...    (the client of serve; glmtp-client --help)\n");
#endif
    fprintf(f, "\nevery command: --log-level error|warn|info|debug, --quiet (= warn); glmtp --version\n"
               "environment: GLMTP_COMM_TIMEOUT=seconds (collective timeout, default 600; serve: 60; serve's\n"
               "  --collective-timeout wins over it); GPU switches: README\n");
}

/* Under mpirun every rank would print --help; only the first one does. */
static int first_rank_by_env(void) {
    const char *vars[] = {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"};
    for (int i = 0; i < 4; i++) {
        const char *v = getenv(vars[i]);
        if (v) return atoi(v) == 0;
    }
    return 1;
}

/* A collective timeout in seconds from text: > 0 and finite, else -1. */
static double parse_timeout(const char *v) {
    char *end = NULL;
    double t = v ? strtod(v, &end) : -1;
    if (!v || end == v || *end || !(t > 0) || t > 1e7) return -1;
    return t;
}

/* The collective timeout of cmd, in order of precedence: its --collective-timeout
 * S option (commands that take it), GLMTP_COMM_TIMEOUT, the command's default
 * (serve 60 s), the comm's (600 s; returned as 0). -1 after a message on a bad
 * value. Every rank sees the same argv and environment, so all agree. */
static double collective_timeout(const command *cmd, int argc, char **argv) {
    if (cmd->timeout_opt)
        for (int i = 2; i < argc; i++) {
            const char *v = NULL;
            if (strcmp(argv[i], "--collective-timeout") == 0) v = i + 1 < argc ? argv[i + 1] : NULL;
            else if (strncmp(argv[i], "--collective-timeout=", 21) == 0) v = argv[i] + 21;
            else continue;
            double t = parse_timeout(v);
            if (t < 0 && first_rank_by_env())
                fprintf(stderr, "glmtp: %s: --collective-timeout %s: expected seconds > 0\n", cmd->name, v ? v : "");
            return t;
        }
    const char *env = getenv("GLMTP_COMM_TIMEOUT");
    if (env) {
        double t = parse_timeout(env);
        if (t < 0 && first_rank_by_env())
            fprintf(stderr, "glmtp: GLMTP_COMM_TIMEOUT=%s: expected seconds > 0\n", env);
        return t;
    }
    return cmd->timeout_s;
}

int main(int argc, char **argv) {
    char err[256];
    if (log_take_args(&argc, argv, err, sizeof err)) {
        fprintf(stderr, "glmtp: %s\n", err);
        return 2;
    }
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        if (first_rank_by_env()) usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "version") == 0) {
        if (first_rank_by_env()) printf("glmtp %s\n", GLMTP_VERSION);
        return 0;
    }
    const char *name = argv[1];
    const command *cmd = NULL;
    for (int i = 0; i < N_COMMANDS; i++)
        if (strcmp(commands[i].name, name) == 0) cmd = &commands[i];
    if (!cmd) {
        if (first_rank_by_env()) {
            if (strcmp(name, "serve") == 0)
                fprintf(stderr, "glmtp: serve: this glmtp was built without protoc-c/libprotobuf-c (-DGLMTP_SERVE=OFF)\n");
            else
                fprintf(stderr, "glmtp: unknown command '%s' (glmtp --help lists them)\n", name);
        }
        return 2;
    }
    if (args_wants_help(argc - 2, argv + 2)) {
        if (first_rank_by_env()) args_print_help(cmd->spec, stdout);
        return 0;
    }
    for (int i = 2; i < argc; i++)
        if (strcmp(argv[i], "--version") == 0) {
            if (first_rank_by_env()) printf("glmtp %s\n", GLMTP_VERSION);
            return 0;
        }
    if (cmd->local) return cmd->local(argc - 2, argv + 2);

    double timeout_s = collective_timeout(cmd, argc, argv);
    if (timeout_s < 0) return 2;
    comm *c = comm_create(&argc, &argv, timeout_s, err, sizeof err);
    if (!c) {
        fprintf(stderr, "glmtp: %s\n", err);
        return 1;
    }
    log_set_rank(c->rank, c->size);
    int rc = cmd->ranked(c, argc - 2, argv + 2);
    comm_destroy(c);
    return rc;
}
