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

/* The template's built-in tool branches (type python / simple_browser / cogview), as
 * HF renders them: trim_blocks drops the first of the two newlines after each
 * {% elif %} tag. Text of the template quoted in ShishirPatil/gorilla
 * (berkeley-function-call-leaderboard, GLM handler). */
static const char builtin_python[] =
    "\n## python\n\n"
    "当你向 `python` 发送包含 Python 代码的消息时，该代码将会在一个有状态的 Jupyter notebook 环境中执行。\n"
    "`python` 返回代码执行的输出，或在执行 60 秒后返回超时。\n"
    "`/mnt/data` 将会持久化存储你的文件。在此会话中，`python` 无法访问互联网。"
    "不要使用 `python` 进行任何网络请求或者在线 API 调用，这些在线内容的访问将不会成功。";
static const char builtin_simple_browser[] =
    "\n## simple_browser\n\n"
    "你可以使用 `simple_browser` 工具。该工具支持以下函数：\n"
    "`search(query: str, recency_days: int)`：使用搜索引擎进行查询并显示结果，可以使用 `recency_days` "
    "参数控制搜索内容的时效性。\n"
    "`mclick(ids: list[int])`：获取一系列指定 id 的页面内容。每次调用时，须选择3-10个页面。"
    "选择多个角度的页面，同时尽可能选择可信任的信息来源。考虑到部分页面是无法加载的，"
    "你也可以多打开一些可能有用的页面而不用担心内容过多。\n"
    "`open_url(url: str)`：打开指定的 URL。\n"
    "\n"
    "使用 `【{引用 id}†{引用文本}】` 来引用内容。\n"
    "\n"
    "操作步骤：1. 使用 `search` 来获得信息列表; 2. 使用 `mclick` 来获取指定 ID 页面的内容; "
    "3. 根据获得的内容进行回复。在回复中应当引用信息来源。\n"
    " 如果用户提供了 URL，也可以用 `open_url` 直接打开页面。\n"
    "如果初次搜索结果没有找到合适的信息，也可以再次使用 `search` 进行搜索。";
static const char builtin_cogview[] =
    "\n## cogview\n\n"
    "如果用户的请求中包含了对图像的描述，你可以使用 `cogview` 来生成图像并展示给用户。"
    "你需要向 `cogview` 发送图像描述，规则：\n"
    "- 发送给 `cogview` 的消息必须使用英语。用户的中文描述必须完全翻译为英语。\n"
    "- 应当尽可能详细地描述图像生成的需求，需求描述约 100 英文单词。\n"
    "- 保持用户原始描述的意图。不要虚构内容或者没见过的人物。\n"
    "- 如无特殊说明，所在地为中国，持有中国立场并遵循中国社会主义价值观。";

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

/* A float as Python's repr writes it (json.dumps uses it): the fewest digits that
 * read back to the same double; positional for decimal exponents -4..15, else
 * d.ddde+XX. NaN and infinities as json.dumps writes them. */
static void python_float_repr(char *out, size_t cap, double d) {
    if (d != d) {
        snprintf(out, cap, "NaN");
        return;
    }
    if (d > 1.7976931348623157e308 || d < -1.7976931348623157e308) {
        snprintf(out, cap, d > 0 ? "Infinity" : "-Infinity");
        return;
    }
    char e[40];
    int p = 1;
    for (; p < 17; p++) {
        snprintf(e, sizeof e, "%.*e", p - 1, d);
        if (strtod(e, NULL) == d) break;
    }
    snprintf(e, sizeof e, "%.*e", p - 1, d);
    char *ep = strchr(e, 'e');
    int exp10 = atoi(ep + 1);
    *ep = 0;
    char digits[24];
    int nd = 0, neg = e[0] == '-';
    for (const char *c = e; *c; c++)
        if (*c >= '0' && *c <= '9') digits[nd++] = *c;
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    digits[nd] = 0;
    sbuf b = {0};
    if (neg) sb_str(&b, "-");
    if (exp10 < -4 || exp10 >= 16) {
        sb_put(&b, digits, 1);
        if (nd > 1) {
            sb_str(&b, ".");
            sb_put(&b, digits + 1, (size_t)nd - 1);
        }
        char x[16];
        snprintf(x, sizeof x, "e%c%02d", exp10 < 0 ? '-' : '+', exp10 < 0 ? -exp10 : exp10);
        sb_str(&b, x);
    } else if (exp10 < 0) {
        sb_str(&b, "0.");
        for (int i = 0; i < -exp10 - 1; i++) sb_str(&b, "0");
        sb_put(&b, digits, (size_t)nd);
    } else {
        int whole = exp10 + 1; /* digits before the point */
        for (int i = 0; i < whole; i++) sb_put(&b, i < nd ? &digits[i] : "0", 1);
        sb_str(&b, ".");
        if (nd > whole)
            sb_put(&b, digits + whole, (size_t)(nd - whole));
        else
            sb_str(&b, "0");
    }
    snprintf(out, cap, "%s", b.s);
    free(b.s);
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
        /* Integral values as Python ints (cJSON keeps no int/float distinction).
         * The range first: converting 1e300 to long long is undefined. */
        if (d > -9e15 && d < 9e15 && d == (double)(long long)d)
            snprintf(num, sizeof num, "%lld", (long long)d);
        else
            python_float_repr(num, sizeof num, d);
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

/* The fixed text of a built-in tool type, or NULL for "function" and unknown types. */
static const char *builtin_text(const char *type) {
    if (strcmp(type, "python") == 0) return builtin_python;
    if (strcmp(type, "simple_browser") == 0) return builtin_simple_browser;
    if (strcmp(type, "cogview") == 0) return builtin_cogview;
    return NULL;
}

/* The system text that describes a message's tools, as HF renders the template:
 * "\n" preamble, then per function tool "\n## NAME\n\n" + tojson(indent=4) + tail
 * (the template writes two newlines before "##"; trim_blocks keeps one). */
static int tools_text(sbuf *b, const cJSON *tools, const char *where, const char *preamble, char *err, size_t errlen) {
    sb_str(b, "\n");
    sb_str(b, preamble);
    const cJSON *tool;
    int k = 0;
    cJSON_ArrayForEach(tool, tools) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(tool, "type");
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(tool, "function");
        const cJSON *name = fn ? cJSON_GetObjectItemCaseSensitive(fn, "name") : NULL;
        const char *builtin = cJSON_IsString(type) ? builtin_text(type->valuestring) : NULL;
        if (builtin) {
            sb_str(b, builtin);
            k++;
            continue;
        }
        if (!cJSON_IsString(type) || strcmp(type->valuestring, "function") != 0) {
            snprintf(err, errlen,
                     "field '%stools[%d].type': must be \"function\" (or a built-in: \"python\", "
                     "\"simple_browser\", \"cogview\")",
                     where, k);
            return -1;
        }
        if (!cJSON_IsObject(fn) || !cJSON_IsString(name)) {
            snprintf(err, errlen, "field '%stools[%d].function': must be an object with a string \"name\"", where, k);
            return -1;
        }
        char *json = chat_json_indent4(fn);
        sb_str(b, "\n## ");
        sb_str(b, name->valuestring);
        sb_str(b, "\n\n");
        sb_str(b, json);
        sb_str(b, function_tail);
        free(json);
        k++;
    }
    return 0;
}

/* <|system|> and the tool text. A message's tools render whenever the key is a
 * list, even an empty one (the template tests "is defined"); the request-level
 * list only when non-empty (no tools asked for, none rendered). */
static int put_tools(ibuf *b, const tokenizer *t, const cJSON *tools, int render_empty, const char *where,
                     const char *preamble, char *err, size_t errlen) {
    if (!tools || (!render_empty && cJSON_GetArraySize(tools) == 0)) return 0;
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
    if (put_tools(&b, t, tools, 0, "", preamble, err, errlen)) goto fail;
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
        if (put_tools(&b, t, m->tools, 1, where, preamble, err, errlen)) goto fail;
        if (m->image) {
            sbuf s = {0};
            if (m->metadata) sb_str(&s, m->metadata);
            sb_str(&s, "\n");
            ib_push(&b, tok_special_id(t, markers[r]));
            int rc = ib_text(&b, t, s.s, s.n);
            free(s.s);
            ib_push(&b, tok_special_id(t, "<|begin_of_image|>"));
            ib_push(&b, tok_special_id(t, "<|endoftext|>"));
            ib_push(&b, tok_special_id(t, "<|end_of_image|>"));
            if (!rc && m->content && m->content[0]) rc = ib_text(&b, t, m->content, strlen(m->content));
            if (rc) {
                snprintf(err, errlen, "out of memory");
                goto fail;
            }
        } else if (m->content && m->content[0]) {
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
    const char *src;
    char field[64];
    if (chat_image_source(msgs, &src, field, sizeof field, err, errlen)) return -1;
    chat_message *m = calloc((size_t)n, sizeof *m);
    char **joined = calloc((size_t)n, sizeof *joined);
    if (!m || !joined) abort();
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        const cJSON *e = cJSON_GetArrayItem(msgs, i);
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(e, "role");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(e, "content");
        const cJSON *meta = cJSON_GetObjectItemCaseSensitive(e, "metadata");
        const cJSON *mt = cJSON_GetObjectItemCaseSensitive(e, "tools");
        const cJSON *img = cJSON_GetObjectItemCaseSensitive(e, "image");
        const char *bad = !cJSON_IsObject(e) || !cJSON_IsString(role) ? "role': missing or not a string"
                          : content && !cJSON_IsString(content) && !cJSON_IsNull(content) && !cJSON_IsArray(content)
                              ? "content': must be a string or a list of parts"
                          : meta && !cJSON_IsString(meta) && !cJSON_IsNull(meta) ? "metadata': must be a string"
                          : mt && !cJSON_IsArray(mt) && !cJSON_IsNull(mt)        ? "tools': must be a list"
                                                                                 : NULL;
        if (bad) {
            snprintf(err, errlen, "field 'messages[%d].%s", i, bad);
            rc = -1;
            break;
        }
        int has_image = cJSON_IsString(img);
        const char *text = cJSON_IsString(content) ? content->valuestring : "";
        if (cJSON_IsArray(content)) { /* text parts joined by "\n" (image parts: checked by chat_image_source) */
            sbuf sb = {0};
            const cJSON *part;
            int k = 0, first = 1;
            cJSON_ArrayForEach(part, content) {
                const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
                const cJSON *tx = cJSON_GetObjectItemCaseSensitive(part, "text");
                if (cJSON_IsString(type) && strcmp(type->valuestring, "text") == 0) {
                    if (!cJSON_IsString(tx)) {
                        snprintf(err, errlen, "field 'messages[%d].content[%d].text': must be a string", i, k);
                        rc = -1;
                        break;
                    }
                    if (!first) sb_str(&sb, "\n");
                    sb_str(&sb, tx->valuestring);
                    first = 0;
                } else {
                    has_image = 1;
                }
                k++;
            }
            sb_put(&sb, "", 1); /* NUL */
            joined[i] = sb.s;
            text = sb.s ? sb.s : "";
        }
        m[i] = (chat_message){role->valuestring, text, cJSON_IsString(meta) ? meta->valuestring : NULL,
                              cJSON_IsArray(mt) ? mt : NULL, has_image};
    }
    if (rc == 0)
        rc = chat_encode(t, m, n, cJSON_IsArray(tools) ? tools : NULL, preamble, add_generation_prompt, ids, n_ids,
                         err, errlen);
    for (int i = 0; i < n; i++) free(joined[i]);
    free(joined);
    free(m);
    return rc;
}

int chat_image_source(const cJSON *msgs, const char **src, char *field, size_t field_len, char *err, size_t errlen) {
    *src = NULL;
    int found = 0, i = 0;
    char here[64]; /* the image's field: the second one's in the error */
    const cJSON *e;
    cJSON_ArrayForEach(e, msgs) {
        const cJSON *img = cJSON_GetObjectItemCaseSensitive(e, "image");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(e, "content");
        if (img && !cJSON_IsNull(img)) {
            if (!cJSON_IsString(img)) {
                snprintf(err, errlen, "field 'messages[%d].image': must be a string (a file path)", i);
                return -1;
            }
            snprintf(here, sizeof here, "messages[%d].image", i);
            if (found++) goto several;
            *src = img->valuestring;
            snprintf(field, field_len, "%s", here);
        }
        int k = 0;
        const cJSON *part;
        const cJSON *parts = cJSON_IsArray(content) ? content : NULL;
        cJSON_ArrayForEach(part, parts) {
            const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
            if (!cJSON_IsObject(part) || !cJSON_IsString(type)) {
                snprintf(err, errlen, "field 'messages[%d].content[%d].type': missing or not a string", i, k);
                return -1;
            }
            if (strcmp(type->valuestring, "image_url") == 0) {
                const cJSON *iu = cJSON_GetObjectItemCaseSensitive(part, "image_url");
                const cJSON *url = cJSON_GetObjectItemCaseSensitive(iu, "url");
                if (!cJSON_IsString(url)) {
                    snprintf(err, errlen, "field 'messages[%d].content[%d].image_url.url': missing or not a string", i,
                             k);
                    return -1;
                }
                snprintf(here, sizeof here, "messages[%d].content[%d].image_url.url", i, k);
                if (found++) goto several;
                *src = url->valuestring;
                snprintf(field, field_len, "%s", here);
            } else if (strcmp(type->valuestring, "text") != 0) {
                snprintf(err, errlen, "field 'messages[%d].content[%d].type': '%s' is not supported (text, image_url)",
                         i, k, type->valuestring);
                return -1;
            }
            k++;
        }
        i++;
    }
    return 0;
several:
    snprintf(err, errlen, "field '%s': a second image: GLM-4V takes one image per conversation", here);
    return -1;
}
