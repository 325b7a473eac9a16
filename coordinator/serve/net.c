/* The network thread of `glmtp serve` (see server.h): one poll() loop over the
 * listening socket, every client and the wake/signal pipes. Frames are read
 * without blocking; the length is checked against max_frame before the body is
 * read. Requests go to the scheduler's inbox; Health and Stats are answered
 * here from the scheduler's last published figures. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../../proto/wire.h"
#include "../../worker/util.h"
#include "serve.h"
#include "validate.h"

#define MAX_CONNS 1024
/* Connections still owing their Auth frame: a guesser may not hold many, and
 * each for at most --auth-timeout seconds, so it cannot fill the table. */
#define MAX_UNAUTHED 32
#define MAX_PENDING (64 << 20) /* bytes queued for one client before it is dropped */

typedef struct conn {
    int fd, serial, authed, close_after, dead, shut;
    double opened; /* accept time, for the auth deadline */
    double dead_t; /* when it was marked dead: lingers at most 2 s */
    uint8_t hdr[4];
    size_t hdr_got;
    uint8_t *body;
    size_t body_len, body_got;
    int in_body;
    uint8_t *wbuf;
    size_t wlen, wcap;
} conn;

typedef struct net {
    server *s;
    conn *c[MAX_CONNS];
    int n, next_serial;
} net;

static conn *find(net *nt, int serial) {
    for (int i = 0; i < nt->n; i++)
        if (nt->c[i]->serial == serial) return nt->c[i];
    return NULL;
}

static void queue_bytes(conn *c, const uint8_t *b, size_t len) {
    if (c->wlen + len > c->wcap) {
        size_t cap = c->wcap ? c->wcap * 2 : 4096;
        while (cap < c->wlen + len) cap *= 2;
        uint8_t *w = realloc(c->wbuf, cap);
        if (!w) abort();
        c->wbuf = w, c->wcap = cap;
    }
    memcpy(c->wbuf + c->wlen, b, len);
    c->wlen += len;
}

static void send_msg(conn *c, const Glmtp__ServerMessage *m) {
    srv_item *it = srv_frame(c->serial, m);
    queue_bytes(c, it->buf, it->len);
    srv_item_free(it);
}

/* An Error not tied to a request; close: close the connection once it is written. */
static void send_error(conn *c, Glmtp__Error__Code code, const char *msg, int close) {
    Glmtp__Error e = GLMTP__ERROR__INIT;
    e.has_code = 1, e.code = code, e.message = (char *)msg;
    Glmtp__ServerMessage m = GLMTP__SERVER_MESSAGE__INIT;
    m.msg_case = GLMTP__SERVER_MESSAGE__MSG_ERROR, m.error = &e;
    send_msg(c, &m);
    if (close) c->close_after = 1;
}

static void send_req_error(conn *c, const char *id, Glmtp__Error__Code code, const char *msg) {
    Glmtp__Error e = GLMTP__ERROR__INIT;
    e.has_code = 1, e.code = code, e.message = (char *)msg;
    Glmtp__GenerateResponse r = GLMTP__GENERATE_RESPONSE__INIT;
    r.request_id = (char *)(id ? id : "");
    r.body_case = GLMTP__GENERATE_RESPONSE__BODY_ERROR, r.error = &e;
    Glmtp__ServerMessage m = GLMTP__SERVER_MESSAGE__INIT;
    m.msg_case = GLMTP__SERVER_MESSAGE__MSG_RESPONSE, m.response = &r;
    send_msg(c, &m);
}

static void close_conn(net *nt, int i) {
    conn *c = nt->c[i];
    if (close(c->fd) < 0) fprintf(stderr, "glmtp: serve: close of connection %d: %s\n", c->serial, strerror(errno));
    srv_item *it = calloc(1, sizeof *it);
    if (!it) abort();
    it->kind = SRV_GONE, it->conn = c->serial;
    srv_push_in(nt->s, it); /* its requests are cancelled at the next step */
    free(c->body);
    free(c->wbuf);
    free(c);
    nt->c[i] = nt->c[--nt->n];
}

static int n_unauthed(const net *nt) {
    int k = 0;
    for (int i = 0; i < nt->n; i++) k += !nt->c[i]->authed && !nt->c[i]->dead && !nt->c[i]->close_after;
    return k;
}

/* Closes (after an error frame) connections that sent no Auth in time. */
static void expire_unauthed(net *nt) {
    double now = util_now();
    for (int i = 0; i < nt->n; i++) {
        conn *c = nt->c[i];
        if (c->authed || c->dead || c->close_after || now - c->opened <= nt->s->auth_timeout) continue;
        char m[96];
        snprintf(m, sizeof m, "no Auth frame within %g s", nt->s->auth_timeout);
        send_error(c, GLMTP__ERROR__CODE__UNAUTHENTICATED, m, 1);
    }
}

/* One complete frame from c. */
static void handle_frame(net *nt, conn *c) {
    server *s = nt->s;
    Glmtp__ClientMessage *m = glmtp__client_message__unpack(NULL, c->body_len, c->body);
    free(c->body);
    c->body = NULL;
    if (!m) {
        send_error(c, GLMTP__ERROR__CODE__BAD_FRAME, "frame is not a valid ClientMessage (protobuf decode failed)", 0);
        return;
    }
    if (s->token && !c->authed) {
        int ok = m->msg_case == GLMTP__CLIENT_MESSAGE__MSG_AUTH && m->auth->token &&
                 util_secret_equal(m->auth->token, s->token);
        glmtp__client_message__free_unpacked(m, NULL);
        if (!ok) {
            send_error(c, GLMTP__ERROR__CODE__UNAUTHENTICATED, "the first frame must be Auth with the server's token", 1);
            return;
        }
        c->authed = 1;
        return;
    }
    switch (m->msg_case) {
    case GLMTP__CLIENT_MESSAGE__MSG_AUTH: /* harmless repeat (or no token needed) */
        break;
    case GLMTP__CLIENT_MESSAGE__MSG_GENERATE: {
        const char *id = m->generate->request_id;
        pthread_mutex_lock(&s->mu);
        int stopping = s->stopping, depth = s->n_in + s->stats.queue_depth;
        pthread_mutex_unlock(&s->mu);
        if (stopping) {
            send_req_error(c, id, GLMTP__ERROR__CODE__SHUTTING_DOWN, "server is shutting down");
            break;
        }
        if (depth >= s->max_queue) {
            char msg[128];
            snprintf(msg, sizeof msg, "overloaded: %d requests queued (--max-queue %d)", depth, s->max_queue);
            send_req_error(c, id, GLMTP__ERROR__CODE__OVERLOADED, msg);
            break;
        }
        srv_item *it = calloc(1, sizeof *it);
        if (!it) abort();
        it->kind = SRV_NEW, it->conn = c->serial, it->env = m, it->req = m->generate;
        /* Validated here, not on the engine thread: an image's decode and resize
         * (up to a second for a large JPEG) then holds up this connection's reads,
         * not every rank's next step. */
        char err[1200];
        if (srv_validate_request(it->req, s->ctx, &it->pre, err, sizeof err) && !(it->pre_err = strdup(err)))
            abort();
        srv_push_in(s, it);
        return; /* m now owned by the item */
    }
    case GLMTP__CLIENT_MESSAGE__MSG_CANCEL: {
        srv_item *it = calloc(1, sizeof *it);
        if (!it || !(it->id = strdup(m->cancel->request_id ? m->cancel->request_id : ""))) abort();
        it->kind = SRV_CANCEL, it->conn = c->serial;
        srv_push_in(s, it);
        break;
    }
    case GLMTP__CLIENT_MESSAGE__MSG_HEALTH: {
        int ok;
        pthread_mutex_lock(&s->mu);
        double now = util_now(), age = srv_stall_age(s, now);
        const char *state = srv_health(s, now, &ok);
        pthread_mutex_unlock(&s->mu);
        Glmtp__HealthReply h = GLMTP__HEALTH_REPLY__INIT;
        h.has_ok = 1, h.ok = ok, h.state = (char *)state;
        h.has_stall_s = 1, h.stall_s = age;
        Glmtp__ServerMessage r = GLMTP__SERVER_MESSAGE__INIT;
        r.msg_case = GLMTP__SERVER_MESSAGE__MSG_HEALTH, r.health = &h;
        send_msg(c, &r);
        break;
    }
    case GLMTP__CLIENT_MESSAGE__MSG_STATS: {
        pthread_mutex_lock(&s->mu);
        srv_stats st = s->stats;
        st.queue_depth += s->n_in;
        double now = util_now(), age = srv_stall_age(s, now);
        pthread_mutex_unlock(&s->mu);
        Glmtp__StatsReply r = GLMTP__STATS_REPLY__INIT;
        r.has_queue_depth = r.has_running = r.has_kv_blocks_used = r.has_kv_blocks_free = 1;
        r.has_tokens_per_s = r.has_steps = r.has_preemptions = r.has_tokens_generated = 1;
        r.queue_depth = st.queue_depth, r.running = st.running, r.kv_blocks_used = st.kv_used;
        r.kv_blocks_free = st.kv_free, r.tokens_per_s = st.tokens_per_s, r.steps = st.steps;
        r.preemptions = st.preemptions, r.tokens_generated = st.generated;
        r.has_prefix_cache = r.has_prompt_tokens = r.has_cached_tokens = r.has_prefix_hit_rate = 1;
        r.has_kv_blocks_cached = r.has_kv_blocks_evicted = 1;
        r.prefix_cache = st.prefix_cache, r.prompt_tokens = st.prompt_tokens, r.cached_tokens = st.cached_tokens;
        r.prefix_hit_rate = st.prompt_tokens ? (double)st.cached_tokens / (double)st.prompt_tokens : 0.0;
        r.kv_blocks_cached = st.kv_cached, r.kv_blocks_evicted = st.evicted;
        r.has_stall_s = r.has_since_last_step_s = 1;
        r.stall_s = age, r.since_last_step_s = st.t_step_done > 0 ? now - st.t_step_done : -1.0;
        char *ok[64];
        int nr = st.n_ranks < 64 ? st.n_ranks : 64;
        for (int i = 0; i < nr; i++) ok[i] = "ok"; /* a failed rank ends the job (collective timeout) */
        r.n_rank_state = (size_t)nr, r.rank_state = ok;
        Glmtp__ServerMessage sm = GLMTP__SERVER_MESSAGE__INIT;
        sm.msg_case = GLMTP__SERVER_MESSAGE__MSG_STATS, sm.stats = &r;
        send_msg(c, &sm);
        break;
    }
    default:
        send_error(c, GLMTP__ERROR__CODE__UNKNOWN_MESSAGE, "unknown message type (ClientMessage with no known field)", 0);
    }
    glmtp__client_message__free_unpacked(m, NULL);
}

/* Reads what is there. Returns -1 when the connection is to be closed now. */
static int on_readable(net *nt, conn *c) {
    if (c->dead) { /* discard what the peer still sends, so that close() does not reset the error away */
        uint8_t junk[4096];
        for (;;) {
            ssize_t k = read(c->fd, junk, sizeof junk);
            if (k < 0 && errno == EINTR) continue;
            if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
            return k <= 0 ? -1 : 0;
        }
    }
    for (;;) {
        uint8_t *dst;
        size_t want;
        if (!c->in_body) dst = c->hdr + c->hdr_got, want = 4 - c->hdr_got;
        else dst = c->body + c->body_got, want = c->body_len - c->body_got;
        ssize_t k = want ? read(c->fd, dst, want) : 0;
        if (want && k < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
            return -1; /* reset by the peer */
        }
        if (want && k == 0) { /* end of stream */
            if (c->hdr_got || c->in_body) {
                char msg[160];
                snprintf(msg, sizeof msg, "truncated frame: end of stream after %zu of %zu body bytes",
                         c->in_body ? c->body_got : 0, c->in_body ? c->body_len : (size_t)4);
                send_error(c, GLMTP__ERROR__CODE__BAD_FRAME, msg, 1);
                c->hdr_got = 0, c->in_body = 0, c->dead = 1, c->dead_t = util_now();
                return 0;
            }
            return -1; /* a disconnect: its requests are cancelled */
        }
        if (!c->in_body) {
            c->hdr_got += (size_t)k;
            if (c->hdr_got < 4) continue;
            uint32_t len = wire_get_len(c->hdr);
            if (len > nt->s->max_frame) { /* before reading the body: the stream cannot be resynchronised */
                char msg[160];
                snprintf(msg, sizeof msg, "frame of %u bytes is over the limit of %u bytes (--max-frame)", len,
                         nt->s->max_frame);
                send_error(c, GLMTP__ERROR__CODE__BAD_FRAME, msg, 1);
                c->dead = 1, c->dead_t = util_now();
                return 0;
            }
            c->body = malloc(len ? len : 1);
            if (!c->body) abort();
            c->body_len = len, c->body_got = 0, c->in_body = 1;
        } else {
            c->body_got += (size_t)k;
        }
        if (c->in_body && c->body_got == c->body_len) {
            c->in_body = 0, c->hdr_got = 0;
            handle_frame(nt, c);
            if (c->close_after) {
                c->dead = 1, c->dead_t = util_now();
                return 0;
            }
        }
    }
}

static int on_writable(conn *c) {
    while (c->wlen) {
        ssize_t k = send(c->fd, c->wbuf, c->wlen, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
        if (k <= 0) return -1;
        memmove(c->wbuf, c->wbuf + k, c->wlen - (size_t)k);
        c->wlen -= (size_t)k;
    }
    return c->close_after && !c->dead ? -1 : 0;
}

static void drain(int fd) {
    char b[256];
    while (read(fd, b, sizeof b) > 0) {
    }
}

void *srv_net_main(void *arg) {
    server *s = arg;
    net nt = {.s = s};
    struct pollfd *pf = malloc(sizeof *pf * (MAX_CONNS + 3));
    if (!pf) abort();
    double stop_t = 0;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        srv_item *out = s->out_head;
        s->out_head = s->out_tail = NULL;
        int done = s->sched_done;
        pthread_mutex_unlock(&s->mu);
        for (srv_item *it = out, *nx; it; it = nx) {
            nx = it->next;
            conn *c = find(&nt, it->conn);
            if (c && c->wlen > MAX_PENDING) { /* a client that does not read: drop it (its requests are cancelled) */
                if (!c->dead) fprintf(stderr, "glmtp: serve: connection %d: over %d bytes unread, closing\n", c->serial, MAX_PENDING);
                c->dead = 1, c->dead_t = 0, c->wlen = 0;
            } else if (c) {
                queue_bytes(c, it->buf, it->len);
            }
            if (c && it->close_after) c->close_after = 1;
            srv_item_free(it);
        }
        int pending = 0;
        for (int i = 0; i < nt.n; i++) pending += nt.c[i]->wlen > 0;
        if (done && (!pending || util_now() - stop_t > 5.0)) break;

        int np = 0;
        pf[np++] = (struct pollfd){s->wake[0], POLLIN, 0};
        pf[np++] = (struct pollfd){s->sig[0], POLLIN, 0};
        int lfd = s->listen_fd >= 0 && nt.n < MAX_CONNS ? np : -1;
        if (lfd >= 0) pf[np++] = (struct pollfd){s->listen_fd, POLLIN, 0};
        int base = np;
        for (int i = 0; i < nt.n; i++)
            pf[np++] = (struct pollfd){nt.c[i]->fd, (short)(POLLIN | (nt.c[i]->wlen ? POLLOUT : 0)), 0};
        if (poll(pf, (nfds_t)np, 1000) < 0) {
            if (errno == EINTR) continue;
            fprintf(stderr, "glmtp: serve: poll: %s\n", strerror(errno));
            abort();
        }
        if (pf[0].revents) drain(s->wake[0]);
        if (pf[1].revents) {
            drain(s->sig[0]);
            pthread_mutex_lock(&s->mu);
            if (!s->stopping) fprintf(stderr, "glmtp: serve: signal received: no new connections, failing what is left\n");
            s->stopping = 1;
            pthread_cond_broadcast(&s->cv);
            pthread_mutex_unlock(&s->mu);
            stop_t = util_now();
            if (s->listen_fd >= 0 && close(s->listen_fd) < 0)
                fprintf(stderr, "glmtp: serve: close of the listening socket: %s\n", strerror(errno));
            s->listen_fd = -1;
            continue; /* the pollfd array no longer matches */
        }
        expire_unauthed(&nt);
        for (int i = nt.n - 1; i >= 0; i--) {
            conn *c = nt.c[i];
            short re = pf[base + i].revents;
            int bad = 0;
            if (re & (POLLIN | POLLHUP | POLLERR)) bad = on_readable(&nt, c) < 0;
            if (!bad && (c->wlen || c->close_after)) bad = on_writable(c) < 0;
            if (!bad && c->dead && !c->wlen && !c->shut) { /* error written: end our side, wait for theirs */
                if (shutdown(c->fd, SHUT_WR) < 0) bad = 1;
                c->shut = 1;
            }
            if (!bad && c->dead && util_now() - c->dead_t > 2.0) bad = 1;
            if (bad || (re & (POLLERR | POLLNVAL))) close_conn(&nt, i);
        }
        if (lfd >= 0 && pf[lfd].revents & POLLIN) {
            for (;;) {
                int fd = accept(s->listen_fd, NULL, NULL);
                if (fd < 0) {
                    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED)
                        fprintf(stderr, "glmtp: serve: accept: %s\n", strerror(errno));
                    break;
                }
                int fl = fcntl(fd, F_GETFL);
                int waiting = s->token ? n_unauthed(&nt) : 0;
                if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 || nt.n >= MAX_CONNS || waiting >= MAX_UNAUTHED) {
                    fprintf(stderr, "glmtp: serve: new connection refused: %s\n",
                            nt.n >= MAX_CONNS        ? "too many connections"
                            : waiting >= MAX_UNAUTHED ? "32 connections are already waiting to authenticate"
                                                     : strerror(errno));
                    close(fd);
                    continue;
                }
                conn *c = calloc(1, sizeof *c);
                if (!c) abort();
                c->fd = fd, c->serial = ++nt.next_serial, c->authed = !s->token, c->opened = util_now();
                nt.c[nt.n++] = c;
            }
        }
    }
    while (nt.n) close_conn(&nt, nt.n - 1);
    free(pf);
    return NULL;
}
