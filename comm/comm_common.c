/* Helpers shared by every communicator implementation. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "comm.h"

int comm_first_failed(comm *c, int failed) {
    uint64_t *all = malloc(sizeof(uint64_t) * (size_t)c->size);
    if (!all) abort();
    c->iface->allgather_u64(c->ctx, failed ? 1 : 0, all);
    int first = -1;
    for (int r = 0; r < c->size && first < 0; r++)
        if (all[r]) first = r;
    free(all);
    return first;
}

int comm_first_mismatch(comm *c, uint64_t value) {
    uint64_t *all = malloc(sizeof(uint64_t) * (size_t)c->size);
    if (!all) abort();
    c->iface->allgather_u64(c->ctx, value, all);
    int first = -1;
    for (int r = 1; r < c->size && first < 0; r++)
        if (all[r] != all[0]) first = r;
    free(all);
    return first;
}

void comm_printf0(const comm *c, const char *fmt, ...) {
    if (c->rank != 0) return;
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    fflush(stdout);
}
