/* Fuzz target: one .safetensors file (8-byte header length, JSON header, data)
 * through st_open_file, the loader's own entry point. The input is written to
 * a scratch file because the loader maps files. An accepted file must keep
 * the header's promises: every tensor named in it is found, and its bytes lie
 * inside the mapping (read back here, so ASan/SEGV catches any that do not). */
#include <cjson/cJSON.h>
#include <string.h>

#include "../../worker/safetensors.h"
#include "fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fuzz_tmpdir();
    return 0;
}

/* Reads every byte of t (the sum keeps the loop from being optimised away). */
static unsigned touch(const st_tensor *t) {
    unsigned s = 0;
    for (size_t i = 0; i < t->nbytes; i++) s += t->data[i];
    return s;
}

/* Every name in the accepted header resolves to a tensor of that name. */
static void check_names(const st_set *s, const uint8_t *data, size_t size) {
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | data[i];
    cJSON *root = cJSON_ParseWithLength((const char *)data + 8, (size_t)hlen);
    FUZZ_CHECK(root != NULL && size >= 8 + hlen, "an accepted header is JSON inside the file");
    const cJSON *e;
    cJSON_ArrayForEach(e, root) {
        if (strcmp(e->string, "__metadata__") == 0) continue;
        const st_tensor *t = st_find(s, e->string);
        FUZZ_CHECK(t && strcmp(t->name, e->string) == 0, "every tensor of an accepted header is found");
        FUZZ_CHECK(t->ndim >= 0 && t->ndim <= ST_MAX_DIMS, "dimensions within ST_MAX_DIMS");
        FUZZ_CHECK(t->nbytes <= size, "tensor bytes within the file");
        (void)touch(t);
    }
    cJSON_Delete(root);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_write("model.safetensors", data, size);
    st_set *s = NULL;
    char err[1024];
    if (st_open_file(&s, path, err, sizeof err) == 0) {
        check_names(s, data, size);
        st_close(s);
    } else {
        FUZZ_CHECK(err[0] != 0, "a refused file has a message");
    }
    return 0;
}
