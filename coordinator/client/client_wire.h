/* client_wire.h: the client side of the protobuf channel, shared by
 * glmtp-client's single requests and its load generator. Errors return -1 with
 * a message in err. */
#ifndef GLMTP_CLIENT_WIRE_H
#define GLMTP_CLIENT_WIRE_H

#include <stddef.h>

#include "glmtp.pb-c.h"

/* Packs m into one frame and writes it (blocking fd). */
int client_send(int fd, const Glmtp__ClientMessage *m, char *err, size_t errlen);
/* Sends the Auth frame with the first line of token_file (no-op when NULL). */
int client_auth(int fd, const char *token_file, char *err, size_t errlen);

#endif
