/* kvsnap.h: KV snapshots of a prefix on disk, one file per rank, and the
 * collective that writes or reads them (rank 0 decides, every rank does its
 * own file, all agree on the outcome).
 *
 * A snapshot is the K/V rows of a prefix's full blocks: n_blocks blocks of
 * block_size tokens, as this rank holds them (its KV heads). Rank 0 names the
 * block ids (its prefix cache's) and a path stem; rank r of tp writes or reads
 * STEM.rank<r>-of-<tp>.kv. Saving writes STEM...kv.tmp.<pid>, fsyncs it,
 * renames it over the final name and fsyncs the directory, so a reader sees a
 * whole file or none.
 *
 * File format, version 1 (all integers little-endian):
 *   header, 128 bytes:
 *     0  char[8] magic "GLMTPKVS"
 *     8  u32 version (1)              12 u32 header bytes (128)
 *    16  u64 model fingerprint (glm_model.fingerprint: config.json's fields,
 *        every tensor's name, dtype and shape in the safetensors headers, and
 *        the first and last 64 bytes of each tensor's data)
 *    24  u32 tp                       28 u32 rank
 *    32  u32 KV dtype (kernels.h KV_DTYPE_*: 0 act, 1 fp8)
 *    36  u32 element bytes (act: the backend's activation bytes, 4 fp32 or
 *        2 bf16; fp8: 1)
 *    40  u32 row bytes: one token's K (or V) on this rank in one layer, fp8
 *        scales included
 *    44  u32 block size               48 u32 layers
 *    52  u32 KV heads on this rank    56 u32 head dim
 *    60  u32 blocks                   64 u32 tokens (blocks x block size)
 *    68  u32 0
 *    72  u64 prefix hash: the prefix cache's key of the last block (the hash
 *        chain of all its token ids, prefix_cache.h)
 *    80  u64 extra (the cache key's content hash; 0 for text)
 *    88  u64 payload bytes           96 u64 payload checksum (kvsnap_hash)
 *   104  16 bytes of 0              120 u64 header checksum: FNV-1a 64 of
 *        bytes 0..119
 *   payload:
 *     i32 token ids [tokens]
 *     per layer: K rows [tokens, nkv * d] elements (fp8: then K scales
 *     [tokens, nkv] fp32), then V the same way.
 * A reader checks, in this order, magic, version, header checksum, tp, rank,
 * model fingerprint, KV dtype and element size, block size, the layout
 * (layers, heads, row bytes), the expected prefix (hash, blocks, token ids),
 * the file's size, and while reading the payload its checksum; any mismatch
 * is a refusal with a message naming the file and the cause, and the blocks it
 * was reading into hold garbage (the caller frees them unregistered). A load
 * may take only the file's first blocks (a prefix shared with a request); it
 * still reads and checks the whole file. */
#ifndef GLMTP_KVSNAP_H
#define GLMTP_KVSNAP_H

#include <stddef.h>
#include <stdint.h>

#include "../comm/comm.h"
#include "kvcache.h"
#include "model.h"

#define KVSNAP_VERSION 1
#define KVSNAP_HEADER_BYTES 128
#define KVSNAP_PATH_MAX 1024

enum { KVSNAP_SAVE = 1, KVSNAP_LOAD = 2 };

/* A parsed header (what a file says, or what this rank expects). */
typedef struct kvsnap_header {
    uint32_t version, tp, rank, dtype, elem_bytes, row_bytes, block_size, n_layers, nkv, head_dim, n_blocks,
        n_tokens;
    uint64_t fingerprint, key, extra, payload_bytes, checksum;
} kvsnap_header;

/* One command of rank 0's, as every rank runs it. */
typedef struct kvsnap_cmd {
    int op;                      /* KVSNAP_SAVE or KVSNAP_LOAD */
    int n_blocks;                /* blocks to save, or to load (the file's first ones) */
    int file_blocks, n_tokens;   /* the file's: blocks, and tokens = blocks * block size */
    uint64_t key, extra;         /* the prefix hash and content hash */
    char stem[KVSNAP_PATH_MAX];  /* DIR/<key as 16 hex digits> */
    int32_t *blocks;             /* [n_blocks] block ids, in prefix order */
    int32_t *ids;                /* [n_tokens] the file's token ids */
} kvsnap_cmd;

/* Streaming 64-bit checksum of the payload (4 lanes of xxh64's round over 32-
 * byte stripes; several GB/s, so it is not what limits a write or read). */
typedef struct kvsnap_hash {
    uint64_t v[4], total;
    unsigned char buf[32];
    size_t n_buf;
} kvsnap_hash;
void kvsnap_hash_init(kvsnap_hash *h);
void kvsnap_hash_update(kvsnap_hash *h, const void *data, size_t n);
uint64_t kvsnap_hash_final(const kvsnap_hash *h);

/* This rank's file name for a stem: STEM.rank<rank>-of-<tp>.kv. */
void kvsnap_path(char *out, size_t len, const char *stem, int rank, int tp);
/* What this rank expects of a snapshot of n_blocks blocks (key, extra, payload
 * fields left 0). */
void kvsnap_expect(kvsnap_header *h /* OUT */, const glm_model *m, const kv_cache *kv, int n_blocks);
/* Reads path's header into h. Checks magic, version and the header checksum
 * only. Returns 0, or -1 with "PATH: why" in err. */
int kvsnap_read_header(const char *path, kvsnap_header *h /* OUT */, char *err, size_t errlen);
/* Compares a file's header with this rank's expectation (tp, rank, model,
 * dtype, block size, layout; n_blocks too when want->n_blocks > 0). Returns 0,
 * or -1 with the cause (no path) in err. */
int kvsnap_check_header(const kvsnap_header *got, const kvsnap_header *want, char *err, size_t errlen);
/* Reads the token ids of a checked file into *ids (malloc'ed, caller frees). */
int kvsnap_read_ids(const char *path, const kvsnap_header *h, int32_t **ids /* OUT */, char *err, size_t errlen);

/* Rank 0, with every other rank in kvsnap_follow (engine_follow calls it on
 * a step whose head is STEP_KVSNAP): sends cmd, runs it on every rank, and
 * agrees. Returns 0 when every rank succeeded, else -1 with the first failing
 * rank's message ("PATH: why") in err. *bytes (may be NULL): rank 0's file
 * bytes. cmd is not changed and stays the caller's. */
int kvsnap_run(comm *c, const glm_model *m, kv_cache *kv, const kvsnap_cmd *cmd, size_t *bytes, char *err,
               size_t errlen);
/* Every rank but 0: receives and runs one command of rank 0's kvsnap_run. */
void kvsnap_follow(comm *c, const glm_model *m, kv_cache *kv);

#endif
