/* wire.h: the socket side shared by `glmtp serve` and glmtp-client: addresses
 * ("HOST:PORT" or "unix:/path"), listening and connecting, and frames (a 4-byte
 * big-endian length, then one packed ClientMessage/ServerMessage; see
 * proto/glmtp.proto). Errors return -1 with a message naming the address or
 * the frame problem in err. */
#ifndef GLMTP_WIRE_H
#define GLMTP_WIRE_H

#include <stddef.h>
#include <stdint.h>

#define WIRE_MAX_FRAME_DEFAULT (16u << 20)

/* Listening socket for addr (non-blocking). *loopback is set to whether it
 * accepts only local peers (unix sockets, 127.0.0.0/8, ::1, localhost). */
int wire_listen(const char *addr, int *loopback /* OUT */, char *err, size_t errlen);
/* Blocking connected socket to addr. */
int wire_connect(const char *addr, char *err, size_t errlen);
/* Writes all of buf (blocking fd). 0 or -1. */
int wire_write_all(int fd, const void *buf, size_t len, char *err, size_t errlen);
/* Reads one frame (blocking fd) into *body (malloc'ed, caller frees). Returns
 * the body length, 0 on a clean end of stream before a frame, -1 on error
 * (truncated frame, length over max_frame, read error). */
long wire_read_frame(int fd, uint8_t **body /* OUT */, uint32_t max_frame, char *err, size_t errlen);
/* Big-endian length prefix. */
void wire_put_len(uint8_t out[4], uint32_t len);
uint32_t wire_get_len(const uint8_t in[4]);

#endif
