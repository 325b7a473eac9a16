#include "client_wire.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../proto/wire.h"

int client_send(int fd, const Glmtp__ClientMessage *m, char *err, size_t errlen) {
    size_t n = glmtp__client_message__get_packed_size(m);
    uint8_t *b = malloc(n + 4);
    if (!b) {
        snprintf(err, errlen, "out of memory for a %zu-byte frame", n);
        return -1;
    }
    wire_put_len(b, (uint32_t)n);
    glmtp__client_message__pack(m, b + 4);
    int rc = wire_write_all(fd, b, n + 4, err, errlen);
    free(b);
    return rc;
}

int client_auth(int fd, const char *token_file, char *err, size_t errlen) {
    if (!token_file) return 0;
    char tok[4096];
    FILE *f = fopen(token_file, "r");
    int ok = f && fgets(tok, sizeof tok, f);
    if (f) fclose(f);
    if (!ok) {
        snprintf(err, errlen, "--auth-token-file %s: cannot read", token_file);
        return -1;
    }
    tok[strcspn(tok, "\r\n")] = 0;
    Glmtp__Auth au = GLMTP__AUTH__INIT;
    au.token = tok;
    Glmtp__ClientMessage cm = GLMTP__CLIENT_MESSAGE__INIT;
    cm.msg_case = GLMTP__CLIENT_MESSAGE__MSG_AUTH, cm.auth = &au;
    return client_send(fd, &cm, err, errlen);
}
