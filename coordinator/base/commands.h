/* commands.h: the glmtp subcommands. Each takes its own argv (after the
 * subcommand name) and returns the process exit status. */
#ifndef GLMTP_COMMANDS_H
#define GLMTP_COMMANDS_H

#include "../../comm/comm.h"

int cmd_make_model(int argc, char **argv);
int cmd_score(comm *c, int argc, char **argv);
int cmd_generate(comm *c, int argc, char **argv);
int cmd_bench(comm *c, int argc, char **argv);
int cmd_chat(comm *c, int argc, char **argv);
int cmd_serve(comm *c, int argc, char **argv);
int cmd_tokenize(int argc, char **argv);

#endif
