/* GLM-4 tool calls <-> OpenAI tool_calls (see tool_calls.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tool_calls.h"

/* A first line longer than this is never a name line (whole and streamed alike,
 * so the stream can stop holding it back). OpenAI names are at most 64 bytes. */
#define TOOLCALL_MAX_LINE 256

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) abort();
    return p;
}

static char *xstrndup(const char *s, size_t n) {
    char *p = xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = 0;
    return p;
}

/* ==== Names ==== */

static int is_line_space(char c) { return c == ' ' || c == '\t' || c == '\r'; }
static int is_ident_start(char c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_'; }
static int is_ident_char(char c) { return is_ident_start(c) || (c >= '0' && c <= '9') || c == '-'; }

/* A name the request offers (names == NULL: any identifier). */
static int name_ok(const char *s, size_t n, const char *const *names, int n_names) {
    if (n == 0) return 0;
    if (!names) {
        if (!is_ident_start(s[0])) return 0;
        for (size_t i = 1; i < n; i++)
            if (!is_ident_char(s[i])) return 0;
        return 1;
    }
    for (int k = 0; k < n_names; k++)
        if (strlen(names[k]) == n && memcmp(names[k], s, n) == 0) return 1;
    return 0;
}

/* Whether s (n bytes) can be the start of a name prefix (names == NULL: of an identifier). */
static int name_prefix_ok(const char *s, size_t n, const char *const *names, int n_names) {
    if (!names) {
        for (size_t i = 0; i < n; i++)
            if (!(i == 0 ? is_ident_start(s[i]) : is_ident_char(s[i]))) return 0;
        return 1;
    }
    for (int k = 0; k < n_names; k++)
        if (strlen(names[k]) >= n && memcmp(names[k], s, n) == 0) return 1;
    return 0;
}

/* The first line trimmed of spaces, tabs and "\r": *off, *n. */
static void trim_line(const char *s, size_t len, size_t *off, size_t *n) {
    size_t a = 0, b = len;
    while (a < b && is_line_space(s[a])) a++;
    while (b > a && is_line_space(s[b - 1])) b--;
    *off = a;
    *n = b - a;
}

/* Whether a first line that starts with s (n bytes, no "\n") can still be a name line. */
static int line_prefix_ok(const char *s, size_t n, const char *const *names, int n_names) {
    if (n > TOOLCALL_MAX_LINE) return 0;
    size_t a = 0;
    while (a < n && is_line_space(s[a])) a++;
    size_t b = a;
    while (b < n && !is_line_space(s[b])) b++;
    if (b == n) return name_prefix_ok(s + a, b - a, names, n_names); /* still inside the name */
    for (size_t i = b; i < n; i++)
        if (!is_line_space(s[i])) return 0; /* text after the name's trailing space */
    return name_ok(s + a, b - a, names, n_names);
}

/* ==== Whole output ==== */

/* n bytes of s without trailing white space. */
static size_t rtrim_len(const char *s, size_t n) {
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' || s[n - 1] == '\n')) n--;
    return n;
}

/* Whether s (n bytes) is exactly one JSON object. */
static int json_object_ok(const char *s, size_t n) {
    const char *end = NULL;
    cJSON *v = cJSON_ParseWithLengthOpts(s, n, &end, 0);
    int ok = v && cJSON_IsObject(v) && end == s + n;
    cJSON_Delete(v);
    return ok;
}

void toolcall_parse(const char *text, size_t len, const char *const *names, int n_names, toolcall_result *out) {
    memset(out, 0, sizeof *out);
    const char *nl = memchr(text, '\n', len);
    if (nl && nl == text) { /* empty metadata line: a plain answer */
        out->content = xstrndup(text + 1, len - 1);
        return;
    }
    if (nl && (size_t)(nl - text) <= TOOLCALL_MAX_LINE && (size_t)(nl - text) + 1 < len && nl[1] == '{') {
        size_t off, n;
        trim_line(text, (size_t)(nl - text), &off, &n);
        const char *args = nl + 1;
        size_t an = rtrim_len(args, len - (size_t)(args - text));
        if (name_ok(text + off, n, names, n_names) && json_object_ok(args, an)) {
            out->is_call = 1;
            out->name = xstrndup(text + off, n);
            out->arguments = xstrndup(args, an);
            return;
        }
    }
    out->content = xstrndup(text, len);
}

void toolcall_result_free(toolcall_result *r) {
    if (!r) return;
    free(r->content);
    free(r->name);
    free(r->arguments);
    memset(r, 0, sizeof *r);
}

/* ==== Streaming ==== */

typedef enum { ST_FIRST_LINE, ST_BRACE, ST_CONTENT, ST_CALL, ST_DONE } stream_state;

struct toolcall_stream {
    char **names; /* NULL: any identifier */
    int n_names;
    int hold_calls;
    toolcall_emit_fn emit;
    void *user;
    char *text; /* every byte fed, NUL-terminated */
    size_t len, cap;
    stream_state st;
    size_t name_off, name_len; /* the call's name in text (ST_BRACE, ST_CALL) */
    size_t args_off;           /* the '{' (ST_CALL) */
    size_t sent;               /* bytes of text emitted (ST_CONTENT, ST_CALL when streaming) */
};

toolcall_stream *toolcall_stream_new(const char *const *names, int n_names, int hold_calls, toolcall_emit_fn emit,
                                     void *user) {
    toolcall_stream *s = xmalloc(sizeof *s);
    memset(s, 0, sizeof *s);
    if (names) {
        s->names = xmalloc(sizeof(char *) * (size_t)(n_names > 0 ? n_names : 1));
        for (int k = 0; k < n_names; k++) s->names[k] = xstrndup(names[k], strlen(names[k]));
        s->n_names = n_names;
    }
    s->hold_calls = hold_calls;
    s->emit = emit;
    s->user = user;
    s->st = ST_FIRST_LINE;
    return s;
}

void toolcall_stream_free(toolcall_stream *s) {
    if (!s) return;
    for (int k = 0; k < s->n_names; k++) free(s->names[k]);
    free(s->names);
    free(s->text);
    free(s);
}

static const char *const *stream_names(const toolcall_stream *s) { return (const char *const *)s->names; }

/* Plain content from offset from: everything fed so far is emitted from here on. */
static void to_content(toolcall_stream *s, size_t from) {
    s->st = ST_CONTENT;
    s->sent = from;
}

/* Emits text[s->sent .. upto). */
static void emit_upto(toolcall_stream *s, toolcall_delta_kind kind, size_t upto) {
    if (upto <= s->sent) return;
    s->emit(s->user, kind, s->text + s->sent, upto - s->sent);
    s->sent = upto;
}

/* Decides the first line and the byte after it, one byte at a time, from offset i. */
static void decide(toolcall_stream *s, size_t i) {
    for (; i < s->len && (s->st == ST_FIRST_LINE || s->st == ST_BRACE); i++) {
        char c = s->text[i];
        if (s->st == ST_BRACE) {
            if (c == '{') {
                s->st = ST_CALL;
                s->args_off = s->sent = i;
                if (!s->hold_calls) s->emit(s->user, TOOLCALL_CALL_START, s->text + s->name_off, s->name_len);
            } else {
                to_content(s, 0);
            }
        } else if (c == '\n' && i == 0) {
            to_content(s, 1); /* empty metadata line */
        } else if (c == '\n') {
            trim_line(s->text, i, &s->name_off, &s->name_len);
            if (i <= TOOLCALL_MAX_LINE && name_ok(s->text + s->name_off, s->name_len, stream_names(s), s->n_names))
                s->st = ST_BRACE;
            else
                to_content(s, 0);
        } else if (!line_prefix_ok(s->text, i + 1, stream_names(s), s->n_names)) {
            to_content(s, 0);
        }
    }
}

void toolcall_stream_feed(toolcall_stream *s, const char *text, size_t len) {
    if (s->st == ST_DONE || len == 0) return;
    if (s->len + len + 1 > s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 256;
        while (cap < s->len + len + 1) cap *= 2;
        s->text = realloc(s->text, cap);
        if (!s->text) abort();
        s->cap = cap;
    }
    memcpy(s->text + s->len, text, len);
    size_t from = s->len;
    s->len += len;
    s->text[s->len] = 0;
    decide(s, from);
    if (s->st == ST_CONTENT) emit_upto(s, TOOLCALL_CONTENT, s->len);
    /* Streamed arguments: all but trailing white space (a whole parse trims it). */
    if (s->st == ST_CALL && !s->hold_calls)
        emit_upto(s, TOOLCALL_ARGUMENTS, s->args_off + rtrim_len(s->text + s->args_off, s->len - s->args_off));
}

int toolcall_stream_finish(toolcall_stream *s) {
    int rc = 0;
    if (s->st == ST_FIRST_LINE || s->st == ST_BRACE) { /* never got to a '{': plain content */
        to_content(s, 0);
        emit_upto(s, TOOLCALL_CONTENT, s->len);
    } else if (s->st == ST_CALL && s->hold_calls) {
        toolcall_result r;
        toolcall_parse(s->text, s->len, stream_names(s), s->n_names, &r);
        if (r.is_call) {
            s->emit(s->user, TOOLCALL_CALL_START, r.name, strlen(r.name));
            s->emit(s->user, TOOLCALL_ARGUMENTS, r.arguments, strlen(r.arguments));
        } else if (r.content[0]) {
            s->emit(s->user, TOOLCALL_CONTENT, r.content, strlen(r.content));
        }
        rc = r.is_call;
        toolcall_result_free(&r);
    } else if (s->st == ST_CALL) {
        rc = json_object_ok(s->text + s->args_off, s->sent - s->args_off) ? 1 : -1;
    }
    s->st = ST_DONE;
    return rc;
}

/* ==== Requests ==== */

typedef struct mapper {
    toolcall_prompt *p;
    int cap_msgs, cap_owned;
    char *err;
    size_t errlen;
} mapper;

static const char *own(mapper *m, char *s) {
    if (m->p->n_owned == m->cap_owned) {
        m->cap_owned = m->cap_owned ? 2 * m->cap_owned : 16;
        m->p->owned = realloc(m->p->owned, sizeof(char *) * (size_t)m->cap_owned);
        if (!m->p->owned) abort();
    }
    m->p->owned[m->p->n_owned++] = s;
    return s;
}

static void add_msg(mapper *m, const char *role, const char *content, const char *metadata, const cJSON *tools,
                    int image) {
    if (m->p->n_msgs == m->cap_msgs) {
        m->cap_msgs = m->cap_msgs ? 2 * m->cap_msgs : 16;
        m->p->msgs = realloc(m->p->msgs, sizeof(chat_message) * (size_t)m->cap_msgs);
        if (!m->p->msgs) abort();
    }
    m->p->msgs[m->p->n_msgs++] = (chat_message){role, content, metadata, tools, image};
}

/* A message's content: a string, null/absent (""), or a list of parts: text
 * parts joined by "\n" (as chat_encode_json), image_url parts setting *image
 * (the url is read by chat_image_source; only its shape is checked here). */
static int content_text(mapper *m, const cJSON *c, int i, const char **out, int *image) {
    *image = 0;
    if (!c || cJSON_IsNull(c)) {
        *out = "";
        return 0;
    }
    if (cJSON_IsString(c)) {
        *out = own(m, xstrndup(c->valuestring, strlen(c->valuestring)));
        return 0;
    }
    if (!cJSON_IsArray(c)) {
        snprintf(m->err, m->errlen,
                 "field 'messages[%d].content': must be a string, null or a list of text and image_url parts", i);
        return -1;
    }
    size_t total = 1;
    int k = 0;
    const cJSON *part;
    cJSON_ArrayForEach(part, c) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (!cJSON_IsObject(part) || !cJSON_IsString(type)) {
            snprintf(m->err, m->errlen, "field 'messages[%d].content[%d].type': missing or not a string", i, k);
            return -1;
        }
        if (strcmp(type->valuestring, "text") == 0) {
            if (!cJSON_IsString(text)) {
                snprintf(m->err, m->errlen, "field 'messages[%d].content[%d].text': must be a string", i, k);
                return -1;
            }
            total += strlen(text->valuestring) + 1;
        } else if (strcmp(type->valuestring, "image_url") == 0) {
            const cJSON *url =
                cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(part, "image_url"), "url");
            if (!cJSON_IsString(url)) {
                snprintf(m->err, m->errlen, "field 'messages[%d].content[%d].image_url.url': missing or not a string",
                         i, k);
                return -1;
            }
            *image = 1;
        } else {
            snprintf(m->err, m->errlen,
                     "field 'messages[%d].content[%d].type': '%s' is not supported (text, image_url)", i, k,
                     type->valuestring);
            return -1;
        }
        k++;
    }
    char *s = xmalloc(total), *w = s;
    cJSON_ArrayForEach(part, c) {
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (strcmp(cJSON_GetObjectItemCaseSensitive(part, "type")->valuestring, "text") != 0) continue;
        const char *t = text->valuestring;
        if (w != s) *w++ = '\n';
        memcpy(w, t, strlen(t));
        w += strlen(t);
    }
    *w = 0;
    *out = own(m, s);
    return 0;
}

/* An assistant's tool_calls as GLM-4 history: metadata = name, content = arguments. */
static int map_tool_calls(mapper *m, const cJSON *calls, int i) {
    if (!cJSON_IsArray(calls)) {
        snprintf(m->err, m->errlen, "field 'messages[%d].tool_calls': must be a list", i);
        return -1;
    }
    int k = 0;
    const cJSON *tc;
    cJSON_ArrayForEach(tc, calls) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(tc, "type");
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(tc, "function");
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(fn, "name");
        const cJSON *args = cJSON_GetObjectItemCaseSensitive(fn, "arguments");
        const char *bad = type && !(cJSON_IsString(type) && strcmp(type->valuestring, "function") == 0)
                              ? "type': must be \"function\""
                          : !cJSON_IsObject(fn)     ? "function': must be an object"
                          : !cJSON_IsString(name)   ? "function.name': missing or not a string"
                          : !cJSON_IsString(args)   ? "function.arguments': missing or not a string (the JSON text)"
                                                    : NULL;
        if (bad) {
            snprintf(m->err, m->errlen, "field 'messages[%d].tool_calls[%d].%s", i, k, bad);
            return -1;
        }
        add_msg(m, "assistant", own(m, xstrndup(args->valuestring, strlen(args->valuestring))),
                own(m, xstrndup(name->valuestring, strlen(name->valuestring))), NULL, 0);
        k++;
    }
    return 0;
}

static int map_message(mapper *m, const cJSON *e, int i) {
    const cJSON *role = cJSON_GetObjectItemCaseSensitive(e, "role");
    const cJSON *calls = cJSON_GetObjectItemCaseSensitive(e, "tool_calls");
    const cJSON *call_id = cJSON_GetObjectItemCaseSensitive(e, "tool_call_id");
    const char *content;
    if (!cJSON_IsObject(e) || !cJSON_IsString(role)) {
        snprintf(m->err, m->errlen, "field 'messages[%d].role': missing or not a string", i);
        return -1;
    }
    const char *r = role->valuestring;
    int image;
    if (content_text(m, cJSON_GetObjectItemCaseSensitive(e, "content"), i, &content, &image)) return -1;
    const cJSON *path = cJSON_GetObjectItemCaseSensitive(e, "image"); /* glmtp generate's form (a file path) */
    if (cJSON_IsString(path)) image = 1;
    if (strcmp(r, "system") == 0 || strcmp(r, "user") == 0) {
        add_msg(m, strcmp(r, "system") == 0 ? "system" : "user", content, NULL, NULL, image);
    } else if (strcmp(r, "assistant") == 0) {
        if (content[0] || image || !calls || cJSON_IsNull(calls)) add_msg(m, "assistant", content, NULL, NULL, image);
        if (calls && !cJSON_IsNull(calls) && map_tool_calls(m, calls, i)) return -1;
    } else if (strcmp(r, "tool") == 0 || strcmp(r, "function") == 0) {
        if (call_id && !cJSON_IsString(call_id)) {
            snprintf(m->err, m->errlen, "field 'messages[%d].tool_call_id': must be a string", i);
            return -1;
        }
        add_msg(m, "observation", content, NULL, NULL, image);
    } else {
        snprintf(m->err, m->errlen,
                 "field 'messages[%d].role': unknown role '%s' (system, user, assistant, tool)", i, r);
        return -1;
    }
    return 0;
}

/* The tools to render (a new array, or NULL for none) after tool_choice. */
static int pick_tools(mapper *m, const cJSON *tools, const cJSON *choice, cJSON **out) {
    *out = NULL;
    int k = 0;
    const cJSON *t;
    if (tools && !cJSON_IsNull(tools) && !cJSON_IsArray(tools)) {
        snprintf(m->err, m->errlen, "field 'tools': must be a list");
        return -1;
    }
    if (!cJSON_IsArray(tools)) tools = NULL;
    cJSON_ArrayForEach(t, tools) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(t, "type");
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(t, "function"), "name");
        if (!cJSON_IsString(type) || strcmp(type->valuestring, "function") != 0 || !cJSON_IsString(name)) {
            snprintf(m->err, m->errlen,
                     "field 'tools[%d]': must be {\"type\": \"function\", \"function\": {\"name\": ...}}", k);
            return -1;
        }
        k++;
    }
    const char *want = NULL; /* a named choice */
    if (choice && !cJSON_IsNull(choice)) {
        const cJSON *name =
            cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(choice, "function"), "name");
        if (cJSON_IsString(choice)) {
            const char *c = choice->valuestring;
            if (strcmp(c, "none") == 0) return 0;
            if (strcmp(c, "auto") != 0 && strcmp(c, "required") != 0) {
                snprintf(m->err, m->errlen, "field 'tool_choice': '%s' is not \"auto\", \"none\" or \"required\"", c);
                return -1;
            }
            if (strcmp(c, "required") == 0 && k == 0) {
                snprintf(m->err, m->errlen, "field 'tool_choice': \"required\" needs a non-empty 'tools'");
                return -1;
            }
        } else if (cJSON_IsString(name)) {
            want = name->valuestring;
        } else {
            snprintf(m->err, m->errlen, "field 'tool_choice.function.name': missing or not a string");
            return -1;
        }
    }
    if (k == 0 && !want) return 0;
    cJSON *picked = cJSON_CreateArray();
    if (!picked) abort();
    cJSON_ArrayForEach(t, tools) {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(t, "function"), "name");
        if (!want || strcmp(name->valuestring, want) == 0) cJSON_AddItemToArray(picked, cJSON_Duplicate(t, 1));
    }
    if (want && cJSON_GetArraySize(picked) == 0) {
        snprintf(m->err, m->errlen, "field 'tool_choice.function.name': '%s' is not one of 'tools'", want);
        cJSON_Delete(picked);
        return -1;
    }
    *out = picked;
    return 0;
}

int toolcall_map_request(const cJSON *messages, const cJSON *tools, const cJSON *tool_choice, toolcall_prompt *out,
                         char *err, size_t errlen) {
    toolcall_prompt p = {0};
    mapper m = {&p, 0, 0, err, errlen};
    if (!cJSON_IsArray(messages) || cJSON_GetArraySize(messages) == 0) {
        snprintf(err, errlen, "field 'messages': must be a non-empty list");
        return -1;
    }
    if (pick_tools(&m, tools, tool_choice, &p.tools)) goto fail;
    if (p.tools) {
        add_msg(&m, "system", "", NULL, p.tools, 0);
        p.names = xmalloc(sizeof(char *) * (size_t)cJSON_GetArraySize(p.tools));
        const cJSON *t;
        cJSON_ArrayForEach(t, p.tools) {
            const char *name =
                cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(t, "function"), "name")->valuestring;
            p.names[p.n_names++] = xstrndup(name, strlen(name));
        }
    }
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, messages) {
        if (map_message(&m, e, i++)) goto fail;
    }
    *out = p;
    return 0;
fail:
    toolcall_prompt_free(&p);
    return -1;
}

void toolcall_prompt_free(toolcall_prompt *p) {
    if (!p) return;
    for (int k = 0; k < p->n_owned; k++) free(p->owned[k]);
    for (int k = 0; k < p->n_names; k++) free(p->names[k]);
    free(p->owned);
    free(p->names);
    free(p->msgs);
    cJSON_Delete(p->tools);
    memset(p, 0, sizeof *p);
}

/* ==== Responses ==== */

void toolcall_make_id(uint64_t seed, char out[32]) {
    static const char digits[] = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    memcpy(out, "call_", 5);
    for (int w = 0; w < 3; w++) { /* three splitmix64 words, 8 base-62 digits each */
        uint64_t z = seed + (uint64_t)(w + 1) * 0x9e3779b97f4a7c15ULL;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        z ^= z >> 31;
        for (int i = 0; i < 8; i++, z /= 62) out[5 + 8 * w + i] = digits[z % 62];
    }
    out[29] = 0;
}

cJSON *toolcall_message_json(const toolcall_result *r, const char *id) {
    cJSON *msg = cJSON_CreateObject();
    if (!msg) abort();
    cJSON_AddStringToObject(msg, "role", "assistant");
    if (!r->is_call) {
        cJSON_AddStringToObject(msg, "content", r->content ? r->content : "");
        return msg;
    }
    cJSON_AddNullToObject(msg, "content");
    cJSON *calls = cJSON_AddArrayToObject(msg, "tool_calls");
    cJSON *call = cJSON_CreateObject(), *fn = cJSON_CreateObject();
    if (!calls || !call || !fn) abort();
    cJSON_AddStringToObject(call, "id", id);
    cJSON_AddStringToObject(call, "type", "function");
    cJSON_AddStringToObject(fn, "name", r->name);
    cJSON_AddStringToObject(fn, "arguments", r->arguments);
    cJSON_AddItemToObject(call, "function", fn);
    cJSON_AddItemToArray(calls, call);
    return msg;
}
