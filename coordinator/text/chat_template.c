/* GLM-4 chat template (see chat_template.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../worker/util.h"
#include "chat_template.h"

/* THUDM glm-4-9b-chat tokenizer_config.json (shared/glm4-chat-template.md). */
static const char default_preamble[] =
    "你是一个名为 GLM-4 的人工智能助手。你是基于智谱AI训练的语言模型 GLM-4 "
    "模型开发的，你的任务是针对用户的问题和要求提供适当的答复和支持。\n\n# 可用工具";
static const char function_tail[] = "\n在调用上述函数时，请使用 Json 格式表示调用的参数。";

typedef struct sbuf {
    char *s;
    size_t n, cap;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? 2 * b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        b->s = realloc(b->s, cap);
        if (!b->s) abort();
        b->cap = cap;
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
}

static void sb_str(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

char *chat_tool_preamble(const char *model_dir) {
    char path[4096], err[256];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", model_dir);
    size_t len;
    char *text = util_read_file(path, &len, err, sizeof err);
    char *out = NULL;
    if (text) {
        cJSON *root = cJSON_ParseWithLength(text, len);
        const cJSON *tpl = root ? cJSON_GetObjectItemCaseSensitive(root, "chat_template") : NULL;
        if (cJSON_IsString(tpl)) {
            const char *a = strstr(tpl->valuestring, "<|system|>\n");
            const char *end = a ? strstr(a, "# 可用工具") : NULL;
            if (a && end) {
                a += strlen("<|system|>\n");
                size_t n = (size_t)(end - a) + strlen("# 可用工具");
                out = malloc(n + 1);
                if (!out) abort();
                memcpy(out, a, n);
                out[n] = 0;
            }
        }
        cJSON_Delete(root);
        free(text);
    }
    if (!out) out = strdup(default_preamble);
    if (!out) abort();
    return out;
}

static void json_string(sbuf *b, const char *s) {
    sb_str(b, "\"");
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[8];
        switch (*p) {
        case '"': sb_str(b, "\\\""); break;
        case '\\': sb_str(b, "\\\\"); break;
        case '\n': sb_str(b, "\\n"); break;
        case '\r': sb_str(b, "\\r"); break;
        case '\t': sb_str(b, "\\t"); break;
        case '\b': sb_str(b, "\\b"); break;
        case '\f': sb_str(b, "\\f"); break;
        default:
            if (*p < 0x20) {
                snprintf(esc, sizeof esc, "\\u%04x", *p);
                sb_str(b, esc);
            } else {
                sb_put(b, (const char *)p, 1);
            }
        }
    }
    sb_str(b, "\"");
}

static void indent(sbuf *b, int level) {
    sb_str(b, "\n");
    for (int i = 0; i < level * 4; i++) sb_str(b, " ");
}

static void json_value(sbuf *b, const cJSON *v, int level) {
    char num[64];
    if (cJSON_IsObject(v) || cJSON_IsArray(v)) {
        int obj = cJSON_IsObject(v);
        if (!v->child) {
            sb_str(b, obj ? "{}" : "[]");
            return;
        }
        sb_str(b, obj ? "{" : "[");
        for (const cJSON *c = v->child; c; c = c->next) {
            indent(b, level + 1);
            if (obj) {
                json_string(b, c->string);
                sb_str(b, ": ");
            }
            json_value(b, c, level + 1);
            if (c->next) sb_str(b, ",");
        }
        indent(b, level);
        sb_str(b, obj ? "}" : "]");
    } else if (cJSON_IsString(v)) {
        json_string(b, v->valuestring);
    } else if (cJSON_IsNumber(v)) {
        double d = v->valuedouble;
        /* Integral values as Python ints (cJSON keeps no int/float distinction). */
        if (d == (double)(long long)d && d > -9e15 && d < 9e15)
            snprintf(num, sizeof num, "%lld", (long long)d);
        else
            snprintf(num, sizeof num, "%.17g", d);
        sb_str(b, num);
    } else if (cJSON_IsBool(v)) {
        sb_str(b, cJSON_IsTrue(v) ? "true" : "false");
    } else {
        sb_str(b, "null");
    }
}

char *chat_json_indent4(const cJSON *v) {
    sbuf b = {0};
    json_value(&b, v, 0);
    return b.s;
}

typedef struct ibuf {
    int *v;
    int n, cap;
} ibuf;

static void ib_push(ibuf *b, int id) {
    if (b->n == b->cap) {
        b->cap = b->cap ? 2 * b->cap : 256;
        b->v = realloc(b->v, sizeof(int) * (size_t)b->cap);
        if (!b->v) abort();
    }
    b->v[b->n++] = id;
}

static int ib_text(ibuf *b, const tokenizer *t, const char *s, size_t n) {
    int *ids, k;
    if (tok_encode(t, s, n, &ids, &k)) return -1; /* out of memory */
    for (int i = 0; i < k; i++) ib_push(b, ids[i]);
    free(ids);
    return 0;
}

/* The system text that describes a message's tools. */
static int tools_text(sbuf *b, const cJSON *tools, const char *where, const char *preamble, char *err, size_t errlen) {
    sb_str(b, "\n");
    sb_str(b, preamble);
    const cJSON *tool;
    int k = 0;
    cJSON_ArrayForEach(tool, tools) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(tool, "type");
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(tool, "function");
        const cJSON *name = fn ? cJSON_GetObjectItemCaseSensitive(fn, "name") : NULL;
        if (!cJSON_IsString(type) || strcmp(type->valuestring, "function") != 0) {
            snprintf(err, errlen,
                     "field '%stools[%d].type': only \"function\" tools are supported (describe built-in tools "
                     "as functions)",
                     where, k);
            return -1;
        }
        if (!cJSON_IsObject(fn) || !cJSON_IsString(name)) {
            snprintf(err, errlen, "field '%stools[%d].function': must be an object with a string \"name\"", where, k);
            return -1;
        }
        char *json = chat_json_indent4(fn);
        sb_str(b, "\n\n## ");
        sb_str(b, name->valuestring);
        sb_str(b, "\n\n");
        sb_str(b, json);
        sb_str(b, function_tail);
        free(json);
        k++;
    }
    return 0;
}

/* <|system|> and the tool text, when tools is a non-empty array. */
static int put_tools(ibuf *b, const tokenizer *t, const cJSON *tools, const char *where, const char *preamble,
                     char *err, size_t errlen) {
    if (!tools || cJSON_GetArraySize(tools) == 0) return 0;
    sbuf s = {0};
    int rc = tools_text(&s, tools, where, preamble ? preamble : default_preamble, err, errlen);
    if (rc == 0) {
        ib_push(b, tok_special_id(t, "<|system|>"));
        if ((rc = ib_text(b, t, s.s, s.n)) != 0) snprintf(err, errlen, "out of memory");
    }
    free(s.s);
    return rc;
}

int chat_encode(const tokenizer *t, const chat_message *msgs, int n, const cJSON *tools, const char *preamble,
                int add_generation_prompt, int **ids, int *n_ids, char *err, size_t errlen) {
    static const char *const roles[] = {"system", "user", "assistant", "observation"};
    static const char *const markers[] = {"<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"};
    ibuf b = {0};
    char where[48];
    ib_push(&b, tok_special_id(t, "[gMASK]"));
    ib_push(&b, tok_special_id(t, "<sop>"));
    if (put_tools(&b, t, tools, "", preamble, err, errlen)) goto fail;
    for (int i = 0; i < n; i++) {
        const chat_message *m = &msgs[i];
        int r = -1;
        for (int k = 0; k < 4; k++)
            if (m->role && strcmp(m->role, roles[k]) == 0) r = k;
        if (r < 0) {
            snprintf(err, errlen, "field 'messages[%d].role': unknown role '%s' (system, user, assistant, observation)", i,
                     m->role ? m->role : "");
            goto fail;
        }
        snprintf(where, sizeof where, "messages[%d].", i);
        if (put_tools(&b, t, m->tools, where, preamble, err, errlen)) goto fail;
        if (m->content && m->content[0]) {
            sbuf s = {0};
            if (m->metadata) sb_str(&s, m->metadata);
            sb_str(&s, "\n");
            sb_str(&s, m->content);
            ib_push(&b, tok_special_id(t, markers[r]));
            int rc = ib_text(&b, t, s.s, s.n);
            if (rc) snprintf(err, errlen, "out of memory");
            free(s.s);
            if (rc) goto fail;
        }
    }
    if (add_generation_prompt) ib_push(&b, tok_special_id(t, "<|assistant|>"));
    *ids = b.v;
    *n_ids = b.n;
    return 0;
fail:
    free(b.v);
    return -1;
}

int chat_encode_json(const tokenizer *t, const cJSON *msgs, const cJSON *tools, const char *preamble,
                     int add_generation_prompt, int **ids, int *n_ids, char *err, size_t errlen) {
    int n = cJSON_GetArraySize(msgs);
    if (!cJSON_IsArray(msgs) || n == 0) {
        snprintf(err, errlen, "field 'messages': must be a non-empty list of {role, content}");
        return -1;
    }
    if (tools && !cJSON_IsNull(tools) && !cJSON_IsArray(tools)) {
        snprintf(err, errlen, "field 'tools': must be a list");
        return -1;
    }
    chat_message *m = calloc((size_t)n, sizeof *m);
    if (!m) abort();
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        const cJSON *e = cJSON_GetArrayItem(msgs, i);
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(e, "role");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(e, "content");
        const cJSON *meta = cJSON_GetObjectItemCaseSensitive(e, "metadata");
        const cJSON *mt = cJSON_GetObjectItemCaseSensitive(e, "tools");
        const char *bad = !cJSON_IsObject(e) || !cJSON_IsString(role)               ? "role': missing or not a string"
                          : content && !cJSON_IsString(content) && !cJSON_IsNull(content) ? "content': must be a string"
                          : meta && !cJSON_IsString(meta) && !cJSON_IsNull(meta)        ? "metadata': must be a string"
                          : mt && !cJSON_IsArray(mt) && !cJSON_IsNull(mt)               ? "tools': must be a list"
                                                                                        : NULL;
        if (bad) {
            snprintf(err, errlen, "field 'messages[%d].%s", i, bad);
            rc = -1;
            break;
        }
        m[i] = (chat_message){role->valuestring, cJSON_IsString(content) ? content->valuestring : "",
                              cJSON_IsString(meta) ? meta->valuestring : NULL, cJSON_IsArray(mt) ? mt : NULL};
    }
    if (rc == 0)
        rc = chat_encode(t, m, n, cJSON_IsArray(tools) ? tools : NULL, preamble, add_generation_prompt, ids, n_ids,
                         err, errlen);
    free(m);
    return rc;
}
