/* KV snapshots on disk (see kvsnap.h): the file format, one rank's write and
 * read, and the collective that runs rank 0's command on every rank. The
 * payload is raw backend elements in host byte order (little-endian on every
 * machine glmtp builds for); the header is written field by field. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kvsnap.h"
#include "step.h"
#include "util.h"

/* ==== checksum ==== */

#define P1 0x9E3779B185EBCA87ULL
#define P2 0xC2B2AE3D27D4EB4FULL
#define P3 0x165667B19E3779F9ULL

static uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
static uint64_t round64(uint64_t acc, uint64_t in) { return rotl(acc + in * P2, 31) * P1; }

static uint64_t load64(const unsigned char *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

void kvsnap_hash_init(kvsnap_hash *h) {
    memset(h, 0, sizeof *h);
    h->v[0] = P1 + P2, h->v[1] = P2, h->v[2] = 0, h->v[3] = 0 - P1;
}

static void stripe(kvsnap_hash *h, const unsigned char *p) {
    for (int i = 0; i < 4; i++) h->v[i] = round64(h->v[i], load64(p + 8 * i));
}

void kvsnap_hash_update(kvsnap_hash *h, const void *data, size_t n) {
    const unsigned char *p = data;
    h->total += n;
    if (h->n_buf) {
        size_t k = 32 - h->n_buf < n ? 32 - h->n_buf : n;
        memcpy(h->buf + h->n_buf, p, k);
        h->n_buf += k, p += k, n -= k;
        if (h->n_buf < 32) return;
        stripe(h, h->buf);
        h->n_buf = 0;
    }
    for (; n >= 32; p += 32, n -= 32) stripe(h, p);
    memcpy(h->buf, p, n);
    h->n_buf = n;
}

uint64_t kvsnap_hash_final(const kvsnap_hash *h) {
    uint64_t a = rotl(h->v[0], 1) + rotl(h->v[1], 7) + rotl(h->v[2], 12) + rotl(h->v[3], 18);
    a ^= h->total;
    for (size_t i = 0; i < h->n_buf; i++) a = rotl(a ^ (h->buf[i] * P3), 11) * P1;
    a ^= a >> 33, a *= P2, a ^= a >> 29, a *= P3;
    return a ^ (a >> 32);
}

/* ==== header ==== */

static void put32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static void put64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static uint32_t get32(const unsigned char *p) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v |= (uint32_t)p[i] << (8 * i);
    return v;
}
static uint64_t get64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static const char magic[8] = {'G', 'L', 'M', 'T', 'P', 'K', 'V', 'S'};

static void encode(unsigned char *b, const kvsnap_header *h) {
    memset(b, 0, KVSNAP_HEADER_BYTES);
    memcpy(b, magic, 8);
    put32(b + 8, h->version), put32(b + 12, KVSNAP_HEADER_BYTES), put64(b + 16, h->fingerprint);
    put32(b + 24, h->tp), put32(b + 28, h->rank), put32(b + 32, h->dtype), put32(b + 36, h->elem_bytes);
    put32(b + 40, h->row_bytes), put32(b + 44, h->block_size), put32(b + 48, h->n_layers), put32(b + 52, h->nkv);
    put32(b + 56, h->head_dim), put32(b + 60, h->n_blocks), put32(b + 64, h->n_tokens);
    put64(b + 72, h->key), put64(b + 80, h->extra), put64(b + 88, h->payload_bytes), put64(b + 96, h->checksum);
    put64(b + 120, util_fnv(UTIL_FNV_INIT, b, 120));
}

/* Returns 0, or -1 with the cause in err. */
static int decode(const unsigned char *b, kvsnap_header *h, char *err, size_t errlen) {
    if (memcmp(b, magic, 8) != 0) {
        snprintf(err, errlen, "not a glmtp KV snapshot (bad magic)");
        return -1;
    }
    h->version = get32(b + 8);
    if (h->version != KVSNAP_VERSION || get32(b + 12) != KVSNAP_HEADER_BYTES) {
        snprintf(err, errlen, "format version %u (this glmtp reads version %d)", h->version, KVSNAP_VERSION);
        return -1;
    }
    if (get64(b + 120) != util_fnv(UTIL_FNV_INIT, b, 120)) {
        snprintf(err, errlen, "header checksum mismatch (damaged file)");
        return -1;
    }
    h->fingerprint = get64(b + 16), h->tp = get32(b + 24), h->rank = get32(b + 28), h->dtype = get32(b + 32);
    h->elem_bytes = get32(b + 36), h->row_bytes = get32(b + 40), h->block_size = get32(b + 44);
    h->n_layers = get32(b + 48), h->nkv = get32(b + 52), h->head_dim = get32(b + 56), h->n_blocks = get32(b + 60);
    h->n_tokens = get32(b + 64), h->key = get64(b + 72), h->extra = get64(b + 80);
    h->payload_bytes = get64(b + 88), h->checksum = get64(b + 96);
    return 0;
}

static const char *dtype_name(uint32_t dtype, uint32_t elem) {
    if (dtype == KV_DTYPE_FP8) return "fp8";
    return elem == 4 ? "act (fp32)" : elem == 2 ? "act (bf16)" : "act";
}

/* Bytes of one token's K (or V) in one layer, and how they split: data
 * elements, then (fp8) one fp32 scale per KV head. */
static size_t data_bytes(const kv_cache *kv, size_t elem) { return (size_t)kv->width * elem; }
static size_t scale_bytes(const kv_cache *kv) {
    return kv->dtype == KV_DTYPE_FP8 ? (size_t)(kv->width / kv->head_dim) * sizeof(float) : 0;
}
static size_t elem_bytes(const glm_model *m, const kv_cache *kv) {
    return kv->dtype == KV_DTYPE_FP8 ? 1 : m->kb.iface->act_bytes;
}

void kvsnap_expect(kvsnap_header *h, const glm_model *m, const kv_cache *kv, int n_blocks) {
    memset(h, 0, sizeof *h);
    size_t elem = elem_bytes(m, kv);
    h->version = KVSNAP_VERSION, h->fingerprint = m->fingerprint, h->tp = (uint32_t)m->shard.tp;
    h->rank = (uint32_t)m->shard.rank, h->dtype = (uint32_t)kv->dtype, h->elem_bytes = (uint32_t)elem;
    h->row_bytes = (uint32_t)(data_bytes(kv, elem) + scale_bytes(kv)), h->block_size = (uint32_t)kv->block_size;
    h->n_layers = (uint32_t)kv->n_layers, h->nkv = (uint32_t)m->shard.nkv, h->head_dim = (uint32_t)m->cfg.head_dim;
    h->n_blocks = (uint32_t)n_blocks, h->n_tokens = (uint32_t)n_blocks * (uint32_t)kv->block_size;
    h->payload_bytes = 4ull * h->n_tokens + 2ull * h->n_layers * h->n_tokens * h->row_bytes;
}

int kvsnap_check_header(const kvsnap_header *g, const kvsnap_header *w, char *err, size_t errlen) {
    if (g->tp != w->tp)
        snprintf(err, errlen, "made with tp %u, this run has tp %u", g->tp, w->tp);
    else if (g->rank != w->rank)
        snprintf(err, errlen, "holds rank %u's heads, not rank %u's", g->rank, w->rank);
    else if (g->fingerprint != w->fingerprint)
        snprintf(err, errlen, "made from another model (fingerprint %016llx, this model's %016llx)",
                 (unsigned long long)g->fingerprint, (unsigned long long)w->fingerprint);
    else if (g->dtype != w->dtype || g->elem_bytes != w->elem_bytes)
        snprintf(err, errlen, "KV dtype %s with %u-byte elements, this run's KV cache is %s with %u-byte elements",
                 dtype_name(g->dtype, g->elem_bytes), g->elem_bytes, dtype_name(w->dtype, w->elem_bytes),
                 w->elem_bytes);
    else if (g->block_size != w->block_size)
        snprintf(err, errlen, "block size %u, this run has --block-size %u", g->block_size, w->block_size);
    else if (g->n_layers != w->n_layers || g->nkv != w->nkv || g->head_dim != w->head_dim ||
             g->row_bytes != w->row_bytes)
        snprintf(err, errlen, "layout %u layers x %u KV heads x %u dims (%u bytes a row), this rank has %u x %u x "
                 "%u (%u)", g->n_layers, g->nkv, g->head_dim, g->row_bytes, w->n_layers, w->nkv, w->head_dim,
                 w->row_bytes);
    else if (w->n_blocks > 0 && g->n_blocks != w->n_blocks)
        snprintf(err, errlen, "holds %u blocks, %u expected", g->n_blocks, w->n_blocks);
    else if (g->n_tokens != (uint64_t)g->n_blocks * g->block_size ||
             g->payload_bytes != 4ull * g->n_tokens + 2ull * g->n_layers * g->n_tokens * g->row_bytes)
        snprintf(err, errlen, "inconsistent sizes in the header (damaged file)");
    else
        return 0;
    return -1;
}

/* ==== file I/O ==== */

/* Writes all n bytes. Returns 0, or -1 with errno. */
static int write_all(int fd, const void *buf, size_t n) {
    const char *p = buf;
    while (n > 0) {
        ssize_t k = write(fd, p, n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        p += k, n -= (size_t)k;
    }
    return 0;
}

/* Reads n bytes: 0, 1 at end of file first, -1 with errno. */
static int read_all(int fd, void *buf, size_t n) {
    char *p = buf;
    while (n > 0) {
        ssize_t k = read(fd, p, n);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) return -1;
        if (k == 0) return 1;
        p += k, n -= (size_t)k;
    }
    return 0;
}

void kvsnap_path(char *out, size_t len, const char *stem, int rank, int tp) {
    snprintf(out, len, "%s.rank%d-of-%d.kv", stem, rank, tp);
}

int kvsnap_read_header(const char *path, kvsnap_header *h, char *err, size_t errlen) {
    unsigned char b[KVSNAP_HEADER_BYTES];
    char why[256];
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    int r = read_all(fd, b, sizeof b);
    close(fd);
    if (r) {
        snprintf(err, errlen, "%s: %s", path, r > 0 ? "truncated: shorter than the 128-byte header" : strerror(errno));
        return -1;
    }
    if (decode(b, h, why, sizeof why)) {
        snprintf(err, errlen, "%s: %s", path, why);
        return -1;
    }
    return 0;
}

int kvsnap_read_ids(const char *path, const kvsnap_header *h, int32_t **ids, char *err, size_t errlen) {
    *ids = malloc(4 * (size_t)(h->n_tokens ? h->n_tokens : 1));
    if (!*ids) abort();
    int fd = open(path, O_RDONLY);
    int r = fd < 0 ? -1 : lseek(fd, KVSNAP_HEADER_BYTES, SEEK_SET) < 0 ? -1 : read_all(fd, *ids, 4 * (size_t)h->n_tokens);
    if (fd >= 0) close(fd);
    if (r) {
        snprintf(err, errlen, "%s: %s", path, r > 0 ? "truncated: ends inside the token ids" : strerror(errno));
        free(*ids);
        *ids = NULL;
        return -1;
    }
    return 0;
}

/* One part of a K or V buffer, per token slot: slot_bytes at base + slot *
 * slot_bytes (the data; for fp8 also the scales from scale_off). */
typedef struct part {
    size_t base, slot_bytes;
} part;

static int parts_of(const glm_model *m, const kv_cache *kv, part *p) {
    p[0] = (part){0, data_bytes(kv, elem_bytes(m, kv))};
    if (kv->dtype != KV_DTYPE_FP8) return 1;
    p[1] = (part){kv->scale_off, scale_bytes(kv)};
    return 2;
}

/* Copies part pt of buffer buf for cmd's blocks between the backend and host
 * (to_dev: host -> backend), consecutive block ids as one copy. */
static void copy_blocks(const glm_model *m, const kv_cache *kv, void *buf, part pt, const kvsnap_cmd *cmd,
                        unsigned char *host, int to_dev) {
    size_t blk = pt.slot_bytes * (size_t)kv->block_size;
    for (int i = 0; i < cmd->n_blocks;) {
        int j = i + 1;
        while (j < cmd->n_blocks && cmd->blocks[j] == cmd->blocks[j - 1] + 1) j++;
        char *dev = (char *)buf + pt.base + (size_t)cmd->blocks[i] * blk;
        if (to_dev)
            m->kb.iface->to_device(m->kb.ctx, dev, host + (size_t)i * blk, (size_t)(j - i) * blk);
        else
            m->kb.iface->to_host(m->kb.ctx, host + (size_t)i * blk, dev, (size_t)(j - i) * blk);
        i = j;
    }
}

/* The directory part of path (".", when it has none) into out. */
static void dir_of(char *out, size_t len, const char *path) {
    const char *s = strrchr(path, '/');
    if (!s) snprintf(out, len, ".");
    else if (s == path) snprintf(out, len, "/");
    else snprintf(out, len, "%.*s", (int)(s - path), path);
}

/* Writes this rank's file of cmd. Returns 0, or -1 with "PATH: why". */
static int save_local(const glm_model *m, const kv_cache *kv, const kvsnap_cmd *cmd, size_t *bytes, char *err,
                      size_t errlen) {
    char path[KVSNAP_PATH_MAX + 64], tmp[KVSNAP_PATH_MAX + 96], dir[KVSNAP_PATH_MAX];
    kvsnap_path(path, sizeof path, cmd->stem, m->shard.rank, m->shard.tp);
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    kvsnap_header h;
    kvsnap_expect(&h, m, kv, cmd->n_blocks);
    h.key = cmd->key, h.extra = cmd->extra;
    if (cmd->file_blocks != cmd->n_blocks) {
        snprintf(err, errlen, "%s: a snapshot saves whole prefixes (%d of %d blocks asked)", path, cmd->n_blocks,
                 cmd->file_blocks);
        return -1;
    }
    part parts[2];
    int n_parts = parts_of(m, kv, parts);
    unsigned char *host = malloc(parts[0].slot_bytes * (size_t)h.n_tokens + 1), hdr[KVSNAP_HEADER_BYTES] = {0};
    if (!host) abort();
    const char *what = "create";
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644), rc = -1;
    if (fd < 0) goto out;
    kvsnap_hash hs;
    kvsnap_hash_init(&hs);
    what = "write";
    if (write_all(fd, hdr, sizeof hdr) || write_all(fd, cmd->ids, 4 * (size_t)h.n_tokens)) goto out;
    kvsnap_hash_update(&hs, cmd->ids, 4 * (size_t)h.n_tokens);
    for (int l = 0; l < kv->n_layers; l++)
        for (int kvi = 0; kvi < 2; kvi++)
            for (int p = 0; p < n_parts; p++) {
                size_t n = parts[p].slot_bytes * (size_t)h.n_tokens;
                copy_blocks(m, kv, kvi ? kv->v[l] : kv->k[l], parts[p], cmd, host, 0);
                kvsnap_hash_update(&hs, host, n);
                if (write_all(fd, host, n)) goto out;
            }
    h.checksum = kvsnap_hash_final(&hs);
    encode(hdr, &h);
    if (pwrite(fd, hdr, sizeof hdr, 0) != (ssize_t)sizeof hdr) goto out;
    what = "fsync";
    if (fsync(fd)) goto out;
    what = "close";
    int cfd = fd;
    fd = -1;
    if (close(cfd)) goto out;
    what = "rename the temporary file to";
    if (rename(tmp, path)) goto out;
    what = "fsync the directory of";
    dir_of(dir, sizeof dir, path);
    int dfd = open(dir, O_RDONLY);
    if (dfd < 0 || fsync(dfd)) {
        if (dfd >= 0) close(dfd);
        goto out;
    }
    close(dfd);
    if (bytes) *bytes = KVSNAP_HEADER_BYTES + h.payload_bytes;
    rc = 0;
out:
    if (rc) {
        snprintf(err, errlen, "%s: cannot %s it: %s", path, what, strerror(errno));
        if (fd >= 0) close(fd);
        unlink(tmp);
    }
    free(host);
    return rc;
}

/* Checks an open file's header, size and ids against cmd. 0 or -1 with why. */
static int check_file(int fd, const glm_model *m, const kv_cache *kv, const kvsnap_cmd *cmd, kvsnap_header *h,
                      char *why, size_t len) {
    unsigned char b[KVSNAP_HEADER_BYTES];
    struct stat st;
    int r = read_all(fd, b, sizeof b);
    if (r) {
        snprintf(why, len, "%s", r > 0 ? "truncated: shorter than the 128-byte header" : strerror(errno));
        return -1;
    }
    kvsnap_header want;
    kvsnap_expect(&want, m, kv, cmd->file_blocks);
    if (decode(b, h, why, len) || kvsnap_check_header(h, &want, why, len)) return -1;
    if (h->key != cmd->key || h->extra != cmd->extra) {
        snprintf(why, len, "holds prefix %016llx, %016llx expected", (unsigned long long)h->key,
                 (unsigned long long)cmd->key);
        return -1;
    }
    if (fstat(fd, &st)) {
        snprintf(why, len, "fstat: %s", strerror(errno));
        return -1;
    }
    if ((uint64_t)st.st_size != KVSNAP_HEADER_BYTES + h->payload_bytes) {
        snprintf(why, len, "%s: the file has %lld bytes, its header says %llu",
                 (uint64_t)st.st_size < KVSNAP_HEADER_BYTES + h->payload_bytes ? "truncated" : "wrong size",
                 (long long)st.st_size, (unsigned long long)(KVSNAP_HEADER_BYTES + h->payload_bytes));
        return -1;
    }
    return 0;
}

/* Reads this rank's file of cmd into cmd's blocks. 0 or -1 with "PATH: why". */
static int load_local(const glm_model *m, kv_cache *kv, const kvsnap_cmd *cmd, size_t *bytes, char *err,
                      size_t errlen) {
    char path[KVSNAP_PATH_MAX + 64], why[512] = "";
    kvsnap_path(path, sizeof path, cmd->stem, m->shard.rank, m->shard.tp);
    part parts[2];
    int n_parts = parts_of(m, kv, parts), rc = -1;
    size_t nt = (size_t)cmd->n_tokens;
    unsigned char *host = malloc(parts[0].slot_bytes * nt + 4 * nt + 1);
    if (!host) abort();
    kvsnap_header h;
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        snprintf(why, sizeof why, "cannot open: %s", strerror(errno));
        goto out;
    }
    if (check_file(fd, m, kv, cmd, &h, why, sizeof why)) goto out;
    kvsnap_hash hs;
    kvsnap_hash_init(&hs);
    int r = read_all(fd, host, 4 * nt);
    if (!r && memcmp(host, cmd->ids, 4 * nt) != 0) {
        snprintf(why, sizeof why, "its token ids differ from the prefix's (a hash collision or a damaged file)");
        goto out;
    }
    kvsnap_hash_update(&hs, host, 4 * nt);
    for (int l = 0; !r && l < kv->n_layers; l++)
        for (int kvi = 0; !r && kvi < 2; kvi++)
            for (int p = 0; !r && p < n_parts; p++) {
                size_t n = parts[p].slot_bytes * nt;
                if ((r = read_all(fd, host, n))) break;
                kvsnap_hash_update(&hs, host, n);
                copy_blocks(m, kv, kvi ? kv->v[l] : kv->k[l], parts[p], cmd, host, 1);
            }
    if (r) {
        snprintf(why, sizeof why, "%s", r > 0 ? "truncated while reading" : strerror(errno));
        goto out;
    }
    if (kvsnap_hash_final(&hs) != h.checksum) {
        snprintf(why, sizeof why, "payload checksum mismatch (damaged file)");
        goto out;
    }
    if (bytes) *bytes = KVSNAP_HEADER_BYTES + h.payload_bytes;
    rc = 0;
out:
    if (rc) snprintf(err, errlen, "%s: %s", path, why);
    if (fd >= 0) close(fd);
    free(host);
    return rc;
}

/* ==== the collective ==== */

/* The command's fixed part, as sent. */
typedef struct wire {
    int32_t op, n_blocks, file_blocks, n_tokens;
    uint64_t key, extra;
    char stem[KVSNAP_PATH_MAX];
} wire;

/* Rank 0's cmd to every rank; non-root ranks get arrays they free. */
static void bcast_cmd(comm *c, kvsnap_cmd *cmd) {
    wire w;
    memset(&w, 0, sizeof w);
    if (c->rank == 0) {
        w.op = cmd->op, w.n_blocks = cmd->n_blocks, w.file_blocks = cmd->file_blocks, w.n_tokens = cmd->n_tokens;
        w.key = cmd->key;
        w.extra = cmd->extra;
        snprintf(w.stem, sizeof w.stem, "%s", cmd->stem);
    }
    c->iface->bcast(c->ctx, &w, sizeof w);
    if (c->rank != 0) {
        cmd->op = w.op, cmd->n_blocks = w.n_blocks, cmd->file_blocks = w.file_blocks, cmd->n_tokens = w.n_tokens;
        cmd->key = w.key;
        cmd->extra = w.extra;
        memcpy(cmd->stem, w.stem, sizeof w.stem);
        cmd->blocks = malloc(4 * (size_t)(w.n_blocks + 1));
        cmd->ids = malloc(4 * (size_t)(w.n_tokens + 1));
        if (!cmd->blocks || !cmd->ids) abort();
    }
    c->iface->bcast(c->ctx, cmd->blocks, 4 * (size_t)cmd->n_blocks);
    c->iface->bcast(c->ctx, cmd->ids, 4 * (size_t)cmd->n_tokens);
}

/* Runs cmd here, then agrees: 0 when every rank succeeded, else -1 with the
 * first failing rank's message in err (on rank 0). */
static int run_agree(comm *c, const glm_model *m, kv_cache *kv, const kvsnap_cmd *cmd, size_t *bytes, char *err,
                     size_t errlen) {
    char msg[KVSNAP_PATH_MAX + 512] = "";
    int rc = cmd->op == KVSNAP_SAVE ? save_local(m, kv, cmd, bytes, msg, sizeof msg)
           : cmd->op == KVSNAP_LOAD ? load_local(m, kv, cmd, bytes, msg, sizeof msg)
                                    : (snprintf(msg, sizeof msg, "unknown snapshot command %d", cmd->op), -1);
    int first = comm_first_failed(c, rc != 0);
    if (first < 0) return 0;
    size_t *lens = malloc(sizeof *lens * (size_t)c->size);
    char *all = c->rank == 0 ? malloc(sizeof msg * (size_t)c->size) : NULL;
    if (!lens || (c->rank == 0 && !all)) abort();
    for (int r = 0; r < c->size; r++) lens[r] = sizeof msg;
    c->iface->gather(c->ctx, msg, all, lens);
    if (c->rank == 0) snprintf(err, errlen, "%s", all + sizeof msg * (size_t)first);
    free(all);
    free(lens);
    return -1;
}

int kvsnap_run(comm *c, const glm_model *m, kv_cache *kv, const kvsnap_cmd *cmd, size_t *bytes, char *err,
               size_t errlen) {
    glm_step s = {0};
    s.head = STEP_KVSNAP;
    step_bcast(c, &s);
    bcast_cmd(c, (kvsnap_cmd *)cmd); /* rank 0 only reads it */
    return run_agree(c, m, kv, cmd, bytes, err, errlen);
}

void kvsnap_follow(comm *c, const glm_model *m, kv_cache *kv) {
    kvsnap_cmd cmd;
    memset(&cmd, 0, sizeof cmd);
    bcast_cmd(c, &cmd);
    char err[16];
    run_agree(c, m, kv, &cmd, NULL, err, sizeof err);
    free(cmd.blocks);
    free(cmd.ids);
}
