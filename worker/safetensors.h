/* safetensors.h: read-only, mmap-backed access to a checkpoint's tensors.
 *
 * A checkpoint directory holds either model.safetensors, or shards listed by
 * model.safetensors.index.json ("weight_map": tensor name -> file). Every header
 * is validated completely when opened (well-formed JSON, known dtype, offsets
 * inside the file, byte size = shape x dtype, no two tensors overlapping), so
 * later reads need no checks. Data is not touched until a caller reads it: a
 * rank that copies only its slices faults in only those pages. */
#ifndef GLMTP_SAFETENSORS_H
#define GLMTP_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "../kernels/dtype.h"

#define ST_MAX_DIMS 4

typedef struct st_tensor {
    const char *name;
    kdtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const uint8_t *data; /* inside the mapping; valid until st_close */
    size_t nbytes;
    const char *file; /* path of the file holding it */
} st_tensor;

typedef struct st_set st_set;

/* Opens DIR's checkpoint. Returns 0, or -1 with a one-line message naming the
 * file (and tensor) in err. On success the caller owns *out (st_close). */
int st_open_dir(st_set **out, const char *dir, char *err, size_t errlen);
/* Opens one .safetensors file (same validation). */
int st_open_file(st_set **out, const char *path, char *err, size_t errlen);
/* The tensor with this name, or NULL. */
const st_tensor *st_find(const st_set *s, const char *name);
/* A hash that tells checkpoints apart: every tensor's name, dtype and shape
 * (in name order), and the first and last 64 bytes of its data (two seeds of
 * the same shapes differ there). Touches two pages per tensor. */
uint64_t st_fingerprint(const st_set *s);
/* Unmaps and frees; accepts NULL. */
void st_close(st_set *s);

#endif
