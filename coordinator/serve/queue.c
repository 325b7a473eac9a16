/* The inbox and outbox of `glmtp serve` (see queue.h). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../proto/wire.h"
#include "queue.h"

static void push(server *s, srv_item **head, srv_item **tail, srv_item *it) {
    it->next = NULL;
    if (*tail) (*tail)->next = it;
    else *head = it;
    *tail = it;
    (void)s;
}

double srv_stall_age(const server *s, double now) {
    double t = s->stats.t_busy;
    return t > 0 && now > t ? now - t : 0.0;
}

const char *srv_health(const server *s, double now, int *ok) {
    *ok = 0;
    if (s->stopping) return "draining";
    if (srv_stall_age(s, now) >= s->stall_s) return "stalled";
    *ok = 1;
    return "serving";
}

void srv_push_in(server *s, srv_item *it) { srv_push_in_all(s, &it, 1); }

void srv_push_in_all(server *s, srv_item **items, int n) {
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < n; i++) {
        push(s, &s->in_head, &s->in_tail, items[i]);
        if (items[i]->kind == SRV_NEW || items[i]->kind == SRV_GEN) s->n_in++;
    }
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

void srv_push_out(server *s, srv_item *it) {
    pthread_mutex_lock(&s->mu);
    push(s, &s->out_head, &s->out_tail, it);
    pthread_mutex_unlock(&s->mu);
    if (write(s->wake[1], "w", 1) < 0 && errno != EAGAIN) /* full pipe: the thread is woken already */
        fprintf(stderr, "glmtp: serve: write to the wake pipe: %s\n", strerror(errno));
}

srv_item *srv_frame(int conn, const Glmtp__ServerMessage *m) {
    srv_item *it = calloc(1, sizeof *it);
    size_t n = glmtp__server_message__get_packed_size(m);
    if (!it || !(it->buf = malloc(n + 4))) abort();
    wire_put_len(it->buf, (uint32_t)n);
    glmtp__server_message__pack(m, it->buf + 4);
    it->len = n + 4, it->kind = SRV_FRAME, it->conn = conn;
    return it;
}

void srv_item_free(srv_item *it) {
    if (!it) return;
    if (it->env) glmtp__client_message__free_unpacked(it->env, NULL);
    free(it->id);
    free(it->buf);
    srv_gen_free(it->gen);
    gen_request_free(&it->pre);
    free(it->pre_err);
    free(it);
}

void srv_gen_free(srv_gen *g) {
    if (!g) return;
    gen_request_free(&g->g);
    free(g->id);
    free(g->stop_ids);
    free(g);
}

