/* commands.h: the glmtp subcommands. Each takes its own argv (after the
 * subcommand name) and returns the process exit status. */
#ifndef GLMTP_COMMANDS_H
#define GLMTP_COMMANDS_H

#include "../../comm/comm.h"
#include "args.h"

int cmd_make_model(int argc, char **argv);
int cmd_score(comm *c, int argc, char **argv);
int cmd_generate(comm *c, int argc, char **argv);
int cmd_bench(comm *c, int argc, char **argv);
int cmd_chat(comm *c, int argc, char **argv);
int cmd_serve(comm *c, int argc, char **argv);
int cmd_tokenize(int argc, char **argv);

/* make-model writes this file beside its random weights; generate and chat
 * then say that the text will be gibberish. */
#define MAKE_MODEL_MARKER "RANDOM_WEIGHTS.txt"

/* Each command's options: what it parses and what its --help prints. */
extern const args_spec cmd_make_model_spec, cmd_score_spec, cmd_generate_spec, cmd_bench_spec, cmd_chat_spec,
    cmd_serve_spec, cmd_tokenize_spec;

#endif
