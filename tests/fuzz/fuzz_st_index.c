/* Fuzz target: model.safetensors.index.json of a sharded checkpoint through
 * st_open_dir. The scratch directory holds two valid shards, a.safetensors
 * (tensors "a.w", "a.b") and b.safetensors ("b.w"); the input is the index. */
#include <cjson/cJSON.h>
#include <string.h>

#include "../../worker/safetensors.h"
#include "fuzz.h"

/* A one-tensor-per-name F32 shard: header then zeroed data. */
static void write_shard(const char *name, const char *header, size_t data_bytes) {
    size_t hl = strlen(header);
    uint8_t buf[1024] = {0};
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(hl >> (8 * i));
    memcpy(buf + 8, header, hl);
    fuzz_write(name, buf, 8 + hl + data_bytes);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    write_shard("a.safetensors",
                "{\"a.w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
                "\"a.b\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[16,20]}}",
                20);
    write_shard("b.safetensors", "{\"b.w\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[0,6]}}", 6);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_write("model.safetensors.index.json", data, size);
    st_set *s = NULL;
    char err[1024];
    if (st_open_dir(&s, fuzz_tmpdir(), err, sizeof err) == 0) {
        /* Accepted: every name in the weight map resolves. */
        cJSON *root = cJSON_ParseWithLength((const char *)data, size);
        const cJSON *e, *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
        FUZZ_CHECK(cJSON_IsObject(map), "an accepted index has a weight_map");
        cJSON_ArrayForEach(e, map) FUZZ_CHECK(st_find(s, e->string) != NULL, "every indexed tensor is found");
        cJSON_Delete(root);
        st_close(s);
    } else {
        FUZZ_CHECK(err[0] != 0, "a refused index has a message");
    }
    return 0;
}
