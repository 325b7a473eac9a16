/* Fuzz target: chat messages and tools through the GLM-4 template
 * (chat_encode_json), with the real vocabulary. The input is JSON: a list of
 * messages, or {"messages": [...], "tools": [...]}. Accepted messages must
 * give a prompt that starts [gMASK]<sop> and ends with <|assistant|>, and
 * whose ids are all in the vocabulary. */
#include <cjson/cJSON.h>
#include <stdlib.h>

#include "../../coordinator/text/chat_template.h"
#include "fuzz.h"

static char *preamble; /* the built-in tool preamble, made once */

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fuzz_tokenizer();
    preamble = chat_tool_preamble(fuzz_tmpdir()); /* no tokenizer_config.json there: the built-in one */
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const tokenizer *t = fuzz_tokenizer();
    cJSON *root = cJSON_ParseWithLength((const char *)data, size);
    if (!root) return 0;
    const cJSON *msgs = root, *tools = NULL;
    if (cJSON_IsObject(root)) {
        msgs = cJSON_GetObjectItemCaseSensitive(root, "messages");
        tools = cJSON_GetObjectItemCaseSensitive(root, "tools");
    }
    int *ids = NULL, n = 0;
    char err[1024];
    if (chat_encode_json(t, msgs, tools, preamble, 1, &ids, &n, err, sizeof err) == 0) {
        FUZZ_CHECK(n >= 3 && ids[0] == tok_special_id(t, "[gMASK]") && ids[1] == tok_special_id(t, "<sop>") &&
                       ids[n - 1] == tok_special_id(t, "<|assistant|>"),
                   "prompt is [gMASK]<sop> ... <|assistant|>");
        for (int i = 0; i < n; i++) FUZZ_CHECK(ids[i] >= 0 && ids[i] < tok_n_total(t), "ids in the vocabulary");
        free(ids);
    } else {
        FUZZ_CHECK(err[0] != 0 && ids == NULL, "a refused chat has a message and no ids");
    }
    if (tools) {
        char *s = chat_json_indent4(tools);
        free(s);
    }
    cJSON_Delete(root);
    return 0;
}
