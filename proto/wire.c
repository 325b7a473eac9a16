/* Sockets and frames (see wire.h). */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "wire.h"

void wire_put_len(uint8_t out[4], uint32_t len) {
    out[0] = (uint8_t)(len >> 24), out[1] = (uint8_t)(len >> 16), out[2] = (uint8_t)(len >> 8), out[3] = (uint8_t)len;
}

uint32_t wire_get_len(const uint8_t in[4]) {
    return (uint32_t)in[0] << 24 | (uint32_t)in[1] << 16 | (uint32_t)in[2] << 8 | (uint32_t)in[3];
}

/* Splits "host:port" (host may be [v6]). Returns 0 or -1. */
static int split_host(const char *addr, char *host, size_t hcap, char *port, size_t pcap) {
    const char *colon = strrchr(addr, ':');
    if (!colon || colon == addr || !colon[1]) return -1;
    size_t hl = (size_t)(colon - addr);
    if (addr[0] == '[' && hl >= 2 && addr[hl - 1] == ']') addr++, hl -= 2;
    if (hl >= hcap || strlen(colon + 1) >= pcap) return -1;
    memcpy(host, addr, hl);
    host[hl] = 0;
    strcpy(port, colon + 1);
    return 0;
}

static int unix_addr(const char *path, struct sockaddr_un *su, char *err, size_t errlen) {
    memset(su, 0, sizeof *su);
    su->sun_family = AF_UNIX;
    if (strlen(path) == 0 || strlen(path) >= sizeof su->sun_path) {
        snprintf(err, errlen, "unix socket path '%s': empty or longer than %zu bytes", path, sizeof su->sun_path - 1);
        return -1;
    }
    strcpy(su->sun_path, path);
    return 0;
}

static int is_loopback(const struct sockaddr *sa) {
    if (sa->sa_family == AF_INET) return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
    if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        return IN6_IS_ADDR_LOOPBACK(a) ||
               (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
    }
    return 0;
}

int wire_listen(const char *addr, int *loopback, char *err, size_t errlen) {
    int fd = -1;
    if (strncmp(addr, "unix:", 5) == 0) {
        struct sockaddr_un su;
        if (unix_addr(addr + 5, &su, err, errlen)) return -1;
        fd = socket(AF_UNIX, SOCK_STREAM, 0);
        if (fd < 0) goto sys;
        unlink(su.sun_path); /* a stale socket file from an earlier run */
        if (bind(fd, (struct sockaddr *)&su, sizeof su) < 0) goto sys;
        *loopback = 1;
    } else {
        char host[256], port[32];
        if (split_host(addr, host, sizeof host, port, sizeof port)) {
            snprintf(err, errlen, "--listen '%s': expected HOST:PORT or unix:/path", addr);
            return -1;
        }
        struct addrinfo hints = {0}, *ai = NULL;
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        hints.ai_flags = AI_PASSIVE;
        int g = getaddrinfo(host, port, &hints, &ai);
        if (g) {
            snprintf(err, errlen, "--listen '%s': %s", addr, gai_strerror(g));
            return -1;
        }
        fd = socket(ai->ai_family, SOCK_STREAM, 0);
        int one = 1;
        if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
            bind(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
            freeaddrinfo(ai);
            goto sys;
        }
        *loopback = is_loopback(ai->ai_addr);
        freeaddrinfo(ai);
    }
    if (listen(fd, 128) < 0) goto sys;
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) goto sys;
    return fd;
sys:
    snprintf(err, errlen, "--listen '%s': %s", addr, strerror(errno));
    if (fd >= 0) close(fd);
    return -1;
}

int wire_connect(const char *addr, char *err, size_t errlen) {
    int fd = -1;
    if (strncmp(addr, "unix:", 5) == 0) {
        struct sockaddr_un su;
        if (unix_addr(addr + 5, &su, err, errlen)) return -1;
        fd = socket(AF_UNIX, SOCK_STREAM, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&su, sizeof su) < 0) goto sys;
        return fd;
    }
    char host[256], port[32];
    if (split_host(addr, host, sizeof host, port, sizeof port)) {
        snprintf(err, errlen, "--connect '%s': expected HOST:PORT or unix:/path", addr);
        return -1;
    }
    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int g = getaddrinfo(host, port, &hints, &ai);
    if (g) {
        snprintf(err, errlen, "--connect '%s': %s", addr, gai_strerror(g));
        return -1;
    }
    fd = socket(ai->ai_family, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
        freeaddrinfo(ai);
        goto sys;
    }
    freeaddrinfo(ai);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* latency only: failure is harmless */
    return fd;
sys:
    snprintf(err, errlen, "connect to '%s': %s", addr, strerror(errno));
    if (fd >= 0) close(fd);
    return -1;
}

int wire_write_all(int fd, const void *buf, size_t len, char *err, size_t errlen) {
    const uint8_t *p = buf;
    while (len > 0) {
        ssize_t k = write(fd, p, len);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            snprintf(err, errlen, "write to socket: %s", k < 0 ? strerror(errno) : "no progress");
            return -1;
        }
        p += k, len -= (size_t)k;
    }
    return 0;
}

/* 1: got n bytes, 0: end of stream before any, -1: error or short. */
static int read_full(int fd, uint8_t *p, size_t n, char *err, size_t errlen, const char *what) {
    size_t got = 0;
    while (got < n) {
        ssize_t k = read(fd, p + got, n - got);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) {
            snprintf(err, errlen, "read %s: %s", what, strerror(errno));
            return -1;
        }
        if (k == 0) {
            if (got == 0) return 0;
            snprintf(err, errlen, "truncated %s: %zu of %zu bytes before end of stream", what, got, n);
            return -1;
        }
        got += (size_t)k;
    }
    return 1;
}

long wire_read_frame(int fd, uint8_t **body, uint32_t max_frame, char *err, size_t errlen) {
    uint8_t h[4];
    *body = NULL;
    int r = read_full(fd, h, 4, err, errlen, "frame header");
    if (r <= 0) return r;
    uint32_t len = wire_get_len(h);
    if (len > max_frame) {
        snprintf(err, errlen, "frame of %u bytes is over the limit of %u bytes", len, max_frame);
        return -1;
    }
    uint8_t *b = malloc(len ? len : 1);
    if (!b) {
        snprintf(err, errlen, "out of memory for a frame of %u bytes", len);
        return -1;
    }
    if (len && read_full(fd, b, len, err, errlen, "frame body") != 1) {
        if (!err[0] || strncmp(err, "read", 4) != 0)
            snprintf(err, errlen, "truncated frame: end of stream inside a %u-byte body", len);
        free(b);
        return -1;
    }
    *body = b;
    return (long)len;
}
