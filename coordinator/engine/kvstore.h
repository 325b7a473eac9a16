/* kvstore.h: rank 0's KV snapshots of documents in a directory
 * (--kv-snapshot-dir DIR), between the prefix cache and the disk.
 *
 * A request that asks to keep a prefix (gen_request.keep_prefix) has its
 * prefix's full blocks written, once its prompt is fed, as one file per rank
 * (worker/kvsnap.h: format, checks, the collective), named
 * DIR/<prefix hash>.rank<R>-of-<TP>.kv where the prefix hash is the prefix
 * cache's key of the last block. A later process with the same DIR:
 *   - at start-up lists DIR, checks each snapshot's rank-0 header (another
 *     model, tp, KV dtype or block size, or a damaged header is refused, one
 *     line each), and loads the valid ones into free blocks registered in the
 *     prefix cache under the same keys, while one takes at most half of the
 *     blocks available; the others stay indexed;
 *   - at admission (sched.c), when the prefix cache lacks the start of a
 *     request's known tokens and an indexed snapshot holds more of it, loads
 *     that snapshot (evicting least recently used cached blocks if needed)
 *     instead of recomputing. A snapshot that fails to load (another rank's
 *     file refused, a damaged payload) is dropped from the index with a
 *     message and the request recomputes.
 * Every load or save is a collective: the other ranks are in engine_follow. */
#ifndef GLMTP_KVSTORE_H
#define GLMTP_KVSTORE_H

#include <stdint.h>

#include "engine.h"

typedef struct kvstore kvstore;

/* Rank 0. Opens DIR (made when missing), checks and loads its snapshots into
 * e's prefix cache as above. Returns the store (the caller frees it with
 * kvstore_close before engine_finish), or NULL after printing why DIR cannot
 * be used. */
kvstore *kvstore_open(engine *e, const char *dir);
void kvstore_close(kvstore *ks); /* accepts NULL */

/* Saves blocks kv->table[0..n_blocks) (full, K/V computed, holding the tokens
 * ids[0 .. n_blocks * block size), extra as in their cache keys) unless the
 * same prefix is on disk already. Returns 0, or -1 after printing why (the
 * request goes on). */
int kvstore_save(kvstore *ks, const int *ids, int n_blocks, const kv_seq *kv, uint64_t extra);

/* Before the prefix cache is searched for a request starting with ids (whole
 * blocks: at most max_blocks of them): loads the indexed snapshot holding the
 * most of its blocks when the cache holds fewer. Returns the tokens loaded,
 * 0 when none. */
int kvstore_fill(kvstore *ks, const int *ids, int max_blocks, uint64_t extra);

#endif
