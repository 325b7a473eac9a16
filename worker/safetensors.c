/* safetensors reader: header validation and mmap (see safetensors.h).
 * File format: u64 little-endian header length N, N bytes of JSON
 * {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}},
 * then the data section; offsets are relative to the data section. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "safetensors.h"
#include "util.h"

/* Far above any real header (GLM-4-9B's are ~30 KB); guards against reading a
 * garbage length as a multi-gigabyte allocation. */
#define ST_MAX_HEADER (64u << 20)

typedef struct st_file {
    char *path;
    uint8_t *map;
    size_t size;
} st_file;

struct st_set {
    st_file *files;
    int n_files;
    st_tensor *tensors; /* sorted by name */
    int n_tensors, cap_tensors;
};

static int parse_dtype(const char *s, kdtype *out) {
    if (strcmp(s, "BF16") == 0) *out = KDT_BF16;
    else if (strcmp(s, "F16") == 0) *out = KDT_F16;
    else if (strcmp(s, "F32") == 0) *out = KDT_F32;
    else return -1;
    return 0;
}

/* A JSON number that is a whole number in [0, 2^53]. */
static int json_u64(const cJSON *v, uint64_t *out) {
    if (!cJSON_IsNumber(v)) return -1;
    double d = v->valuedouble;
    if (!(d >= 0) || d > 9007199254740992.0 || d != floor(d)) return -1;
    *out = (uint64_t)d;
    return 0;
}

static st_tensor *push_tensor(st_set *s) {
    if (s->n_tensors == s->cap_tensors) {
        int cap = s->cap_tensors ? 2 * s->cap_tensors : 64;
        st_tensor *t = realloc(s->tensors, sizeof *t * (size_t)cap);
        if (!t) return NULL;
        s->tensors = t;
        s->cap_tensors = cap;
    }
    st_tensor *t = &s->tensors[s->n_tensors++];
    memset(t, 0, sizeof *t);
    return t;
}

static int by_offset(const void *a, const void *b) {
    const st_tensor *x = *(st_tensor *const *)a, *y = *(st_tensor *const *)b;
    return x->data < y->data ? -1 : x->data > y->data;
}

static int by_name(const void *a, const void *b) {
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

/* Parses one header entry into t. Returns 0 or -1 with err. */
static int parse_entry(const cJSON *e, st_tensor *t, const uint8_t *data, size_t data_size, const char *path,
                       char *err, size_t errlen) {
    const char *name = e->string;
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsObject(e) || !cJSON_IsString(dt) || !cJSON_IsArray(sh) || !cJSON_IsArray(off)) {
        snprintf(err, errlen, "%s: tensor '%s': header entry needs dtype, shape and data_offsets", path, name);
        return -1;
    }
    if (parse_dtype(dt->valuestring, &t->dtype)) {
        snprintf(err, errlen, "%s: tensor '%s': unknown or unsupported dtype '%s' (glmtp reads BF16, F16, F32)",
                 path, name, dt->valuestring);
        return -1;
    }
    t->ndim = cJSON_GetArraySize(sh);
    if (t->ndim > ST_MAX_DIMS) {
        snprintf(err, errlen, "%s: tensor '%s': %d dimensions (at most %d)", path, name, t->ndim, ST_MAX_DIMS);
        return -1;
    }
    uint64_t elems = 1;
    for (int i = 0; i < t->ndim; i++) {
        uint64_t d;
        if (json_u64(cJSON_GetArrayItem(sh, i), &d) || d > (1ull << 40)) {
            snprintf(err, errlen, "%s: tensor '%s': shape must hold non-negative integers", path, name);
            return -1;
        }
        t->shape[i] = (int64_t)d;
        /* Checked before multiplying: [2^32, 2^32] would wrap the count to 0. */
        if (d && elems > (1ull << 50) / d) {
            snprintf(err, errlen, "%s: tensor '%s': shape too large", path, name);
            return -1;
        }
        elems *= d;
    }
    uint64_t b, en;
    if (cJSON_GetArraySize(off) != 2 || json_u64(cJSON_GetArrayItem(off, 0), &b) ||
        json_u64(cJSON_GetArrayItem(off, 1), &en) || b > en) {
        snprintf(err, errlen, "%s: tensor '%s': data_offsets must be [begin, end] with 0 <= begin <= end", path,
                 name);
        return -1;
    }
    if (en > data_size) {
        snprintf(err, errlen,
                 "%s: tensor '%s': data_offsets [%llu, %llu] outside the file's data section (%zu bytes; "
                 "truncated file?)",
                 path, name, (unsigned long long)b, (unsigned long long)en, data_size);
        return -1;
    }
    uint64_t want = elems * kdtype_size(t->dtype);
    if (en - b != want) {
        snprintf(err, errlen, "%s: tensor '%s': holds %llu bytes but its shape and dtype %s need %llu", path, name,
                 (unsigned long long)(en - b), dt->valuestring, (unsigned long long)want);
        return -1;
    }
    t->data = data + b;
    t->nbytes = (size_t)(en - b);
    return 0;
}

/* Maps one file and appends its tensors to s. */
static int add_file(st_set *s, const char *path, char *err, size_t errlen) {
    st_file *files = realloc(s->files, sizeof *files * (size_t)(s->n_files + 1));
    if (!files) {
        snprintf(err, errlen, "%s: out of memory", path);
        return -1;
    }
    s->files = files;
    st_file *f = &s->files[s->n_files];
    memset(f, 0, sizeof *f);
    f->path = strdup(path);
    if (!f->path) {
        snprintf(err, errlen, "%s: out of memory", path);
        return -1;
    }
    s->n_files++;

    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        snprintf(err, errlen, "%s: cannot stat: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s: not a regular file", path);
        close(fd);
        return -1;
    }
    f->size = (size_t)st.st_size;
    if (f->size < 8) {
        snprintf(err, errlen, "%s: truncated: %zu bytes, shorter than the 8-byte header length", path, f->size);
        close(fd);
        return -1;
    }
    f->map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (f->map == MAP_FAILED) {
        f->map = NULL;
        snprintf(err, errlen, "%s: mmap failed: %s", path, strerror(errno));
        return -1;
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | f->map[i];
    if (hlen > f->size - 8 || hlen > ST_MAX_HEADER) {
        snprintf(err, errlen, "%s: header length %llu exceeds the file (%zu bytes; truncated or not safetensors)",
                 path, (unsigned long long)hlen, f->size);
        return -1;
    }
    const char *hdr = (const char *)f->map + 8, *end = hdr;
    cJSON *root = cJSON_ParseWithLengthOpts(hdr, (size_t)hlen, &end, 0);
    if (!root) {
        snprintf(err, errlen, "%s: header is not valid JSON (error at byte %zu of %llu)", path,
                 (size_t)(end - hdr), (unsigned long long)hlen);
        return -1;
    }
    if (!cJSON_IsObject(root)) {
        snprintf(err, errlen, "%s: header is not a JSON object", path);
        cJSON_Delete(root);
        return -1;
    }
    /* Only padding may follow the JSON: anything else means a wrong header length. */
    for (const char *p = end; p < hdr + hlen; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            snprintf(err, errlen,
                     "%s: header length %llu is wrong: the JSON ends at byte %zu, followed by non-space bytes",
                     path, (unsigned long long)hlen, (size_t)(end - hdr));
            cJSON_Delete(root);
            return -1;
        }
    }
    const uint8_t *data = f->map + 8 + hlen;
    size_t data_size = f->size - 8 - (size_t)hlen;
    int first = s->n_tensors, rc = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, root) {
        if (strcmp(e->string, "__metadata__") == 0) continue;
        st_tensor *t = push_tensor(s);
        if (!t || !(t->name = strdup(e->string))) {
            snprintf(err, errlen, "%s: out of memory", path);
            rc = -1;
            break;
        }
        t->file = f->path;
        if (parse_entry(e, t, data, data_size, path, err, errlen)) {
            rc = -1;
            break;
        }
    }
    cJSON_Delete(root);
    if (rc) return rc;

    /* No two tensors of this file may share bytes. */
    int n = s->n_tensors - first;
    st_tensor **order = malloc(sizeof *order * (size_t)(n ? n : 1));
    if (!order) {
        snprintf(err, errlen, "%s: out of memory", path);
        return -1;
    }
    for (int i = 0; i < n; i++) order[i] = &s->tensors[first + i];
    qsort(order, (size_t)n, sizeof *order, by_offset);
    for (int i = 1; i < n && rc == 0; i++) {
        if (order[i]->data < order[i - 1]->data + order[i - 1]->nbytes) {
            snprintf(err, errlen, "%s: tensor '%s': data overlaps tensor '%s'", path, order[i]->name,
                     order[i - 1]->name);
            rc = -1;
        }
    }
    free(order);
    return rc;
}

static int finish(st_set *s, char *err, size_t errlen) {
    if (s->n_tensors == 0) return 0; /* a header of metadata only; and tensors is NULL, which qsort must not get */
    qsort(s->tensors, (size_t)s->n_tensors, sizeof *s->tensors, by_name);
    for (int i = 1; i < s->n_tensors; i++) {
        if (strcmp(s->tensors[i].name, s->tensors[i - 1].name) == 0) {
            snprintf(err, errlen, "%s: tensor '%s' appears twice (also in %s)", s->tensors[i].file,
                     s->tensors[i].name, s->tensors[i - 1].file);
            return -1;
        }
    }
    return 0;
}

int st_open_file(st_set **out, const char *path, char *err, size_t errlen) {
    st_set *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (add_file(s, path, err, errlen) || finish(s, err, errlen)) {
        st_close(s);
        return -1;
    }
    *out = s;
    return 0;
}

static int has_file(const st_set *s, const char *path) {
    for (int i = 0; i < s->n_files; i++)
        if (strcmp(s->files[i].path, path) == 0) return 1;
    return 0;
}

/* Opens every shard named by the index, then checks the index against them. */
static int open_index(st_set *s, const char *dir, const char *index_path, char *err, size_t errlen) {
    size_t len;
    char *text = util_read_file(index_path, &len, err, errlen);
    if (!text) return -1;
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    const cJSON *map = root ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
    int rc = 0;
    if (!cJSON_IsObject(map)) {
        snprintf(err, errlen, "%s: not JSON with a \"weight_map\" object", index_path);
        rc = -1;
    }
    char path[4096];
    const cJSON *e;
    if (rc == 0) {
        cJSON_ArrayForEach(e, map) {
            if (!cJSON_IsString(e) || strchr(e->valuestring, '/')) {
                snprintf(err, errlen, "%s: weight_map['%s'] must be a file name in the same directory",
                         index_path, e->string);
                rc = -1;
                break;
            }
            snprintf(path, sizeof path, "%s/%s", dir, e->valuestring);
            if (has_file(s, path)) continue;
            if (access(path, R_OK) != 0) {
                snprintf(err, errlen, "%s: tensor '%s': cannot open its shard %s: %s", index_path, e->string, path,
                         strerror(errno));
                rc = -1;
                break;
            }
            if ((rc = add_file(s, path, err, errlen)) != 0) break;
        }
    }
    if (rc == 0) rc = finish(s, err, errlen);
    if (rc == 0) {
        cJSON_ArrayForEach(e, map) {
            const st_tensor *t = st_find(s, e->string);
            snprintf(path, sizeof path, "%s/%s", dir, e->valuestring);
            if (!t || strcmp(t->file, path) != 0) {
                snprintf(err, errlen, "%s: tensor '%s' is not in %s as the index says", index_path, e->string,
                         path);
                rc = -1;
                break;
            }
        }
    }
    cJSON_Delete(root);
    return rc;
}

int st_open_dir(st_set **out, const char *dir, char *err, size_t errlen) {
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "%s: model directory not found", dir);
        return -1;
    }
    char single[4096], index[4096];
    snprintf(single, sizeof single, "%s/model.safetensors", dir);
    snprintf(index, sizeof index, "%s/model.safetensors.index.json", dir);
    if (access(index, F_OK) == 0) {
        st_set *s = calloc(1, sizeof *s);
        if (!s) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        if (open_index(s, dir, index, err, errlen)) {
            st_close(s);
            return -1;
        }
        *out = s;
        return 0;
    }
    if (access(single, F_OK) == 0) return st_open_file(out, single, err, errlen);
    snprintf(err, errlen, "%s: no model.safetensors or model.safetensors.index.json", dir);
    return -1;
}

const st_tensor *st_find(const st_set *s, const char *name) {
    if (s->n_tensors == 0) return NULL; /* tensors is NULL: not for bsearch */
    st_tensor key;
    key.name = name;
    return bsearch(&key, s->tensors, (size_t)s->n_tensors, sizeof *s->tensors, by_name);
}

uint64_t st_fingerprint(const st_set *s) {
    uint64_t h = UTIL_FNV_INIT;
    for (int i = 0; i < s->n_tensors; i++) {
        const st_tensor *t = &s->tensors[i];
        int64_t meta[2 + ST_MAX_DIMS] = {t->dtype, t->ndim};
        for (int d = 0; d < t->ndim; d++) meta[2 + d] = t->shape[d];
        size_t k = t->nbytes < 64 ? t->nbytes : 64;
        h = util_fnv(h, t->name, strlen(t->name) + 1);
        h = util_fnv(h, meta, sizeof meta);
        if (k) h = util_fnv(util_fnv(h, t->data, k), t->data + t->nbytes - k, k);
    }
    return h;
}

void st_close(st_set *s) {
    if (!s) return;
    for (int i = 0; i < s->n_tensors; i++) free((char *)s->tensors[i].name);
    for (int i = 0; i < s->n_files; i++) {
        if (s->files[i].map) munmap(s->files[i].map, s->files[i].size);
        free(s->files[i].path);
    }
    free(s->tensors);
    free(s->files);
    free(s);
}
