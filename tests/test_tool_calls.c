/* test_tool_calls: coordinator/text/tool_calls.c.
 *   test_tool_calls VOCAB_FILE CASES_JSON
 * CASES_JSON is tests/chat/cases.json (make_chat_golden.py, HF transformers).
 * Checks:
 *   - parser, whole: a call, a call with Chinese arguments, malformed JSON
 *     (plain content), plain text (leading metadata newline dropped), text that
 *     starts like a name but is not, a name the request does not offer, a name
 *     line not followed by '{', any identifier when no name list is given;
 *   - parser, streamed: every output fed in two pieces split at every byte, and
 *     one byte at a time, in both modes: the deltas joined equal the whole parse
 *     (hold mode: for every output; streaming mode: for every output but a
 *     malformed call, which finish flags with -1); plain content is not held
 *     back past the first line, streamed arguments not past what has arrived;
 *   - request side: each golden case carrying an OpenAI request (tools,
 *     tool_choice auto/none/required/named, tool-call history, tool results,
 *     content parts) mapped by toolcall_map_request and encoded by chat_encode
 *     equals HF's ids; bad requests fail naming the field;
 *   - ids and the OpenAI message JSON.
 * Prints one line per check, then "N passed, M failed"; exits 1 on failure. */
#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../coordinator/text/chat_template.h"
#include "../coordinator/text/tool_calls.h"
#include "../worker/util.h"

static int n_pass, n_fail;

static void check(int ok, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("%s %d ", ok ? "ok  " : "FAIL", n_pass + n_fail + 1);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    if (ok) n_pass++;
    else n_fail++;
}

static int str_eq(const char *a, const char *b) { return (!a && !b) || (a && b && strcmp(a, b) == 0); }

/* ==== Parser cases ==== */

static const char *const NAMES[] = {"get_weather", "search", "book_flight"};

typedef struct pcase {
    const char *what, *text;
    int any_name; /* names NULL: any identifier */
    int is_call;
    const char *name, *arguments, *content;
    int broken; /* a name line and '{' but not a call: a streamed call that finish flags */
} pcase;

static const pcase CASES[] = {
    {"a call", "get_weather\n{\"city\": \"Paris\", \"days\": 2}", 0, 1, "get_weather",
     "{\"city\": \"Paris\", \"days\": 2}", NULL, 0},
    {"a call with Chinese arguments and trailing white space", "get_weather\n{\"city\": \"北京\", \"备注\": \"明天\\n下午\"}\n \n",
     0, 1, "get_weather", "{\"city\": \"北京\", \"备注\": \"明天\\n下午\"}", NULL, 0},
    {"a call with nested, multi-line arguments",
     "book_flight\n{\n  \"passenger\": {\"name\": \"李雷\", \"tags\": [\"vip\"]},\n  \"legs\": []\n}", 0, 1,
     "book_flight", "{\n  \"passenger\": {\"name\": \"李雷\", \"tags\": [\"vip\"]},\n  \"legs\": []\n}", NULL, 0},
    {"a name line with spaces and \\r", "  search \r\n{\"q\": \"x\"}", 0, 1, "search", "{\"q\": \"x\"}", NULL, 0},
    {"malformed JSON is plain content", "get_weather\n{\"city\": Paris}", 0, 0, NULL, NULL,
     "get_weather\n{\"city\": Paris}", 1},
    {"truncated JSON is plain content", "get_weather\n{\"city\": \"Par", 0, 0, NULL, NULL,
     "get_weather\n{\"city\": \"Par", 1},
    {"text after the object is plain content", "search\n{\"q\": 1} and more", 0, 0, NULL, NULL,
     "search\n{\"q\": 1} and more", 1},
    {"a JSON array is plain content", "search\n{\"q\": 1}\n[1]", 0, 0, NULL, NULL, "search\n{\"q\": 1}\n[1]", 1},
    {"plain text", "\nParis is sunny today.\n\nBring {nothing}.", 0, 0, NULL, NULL,
     "Paris is sunny today.\n\nBring {nothing}.", 0},
    {"plain text without the metadata line", "Hello there", 0, 0, NULL, NULL, "Hello there", 0},
    {"text that starts like a name", "get_weathers\n{\"city\": \"Paris\"}", 0, 0, NULL, NULL,
     "get_weathers\n{\"city\": \"Paris\"}", 0},
    {"a name prefix then prose", "get weather in Paris\n{\"a\": 1}", 0, 0, NULL, NULL,
     "get weather in Paris\n{\"a\": 1}", 0},
    {"a name line without a brace", "search\nthe web for cats", 0, 0, NULL, NULL, "search\nthe web for cats", 0},
    {"a bare name", "search", 0, 0, NULL, NULL, "search", 0},
    {"a name and newline only", "search\n", 0, 0, NULL, NULL, "search\n", 0},
    {"an empty output", "", 0, 0, NULL, NULL, "", 0},
    {"an unknown name with a list", "lookup\n{\"q\": 1}", 0, 0, NULL, NULL, "lookup\n{\"q\": 1}", 0},
    {"any identifier without a list", "lookup_v2\n{\"q\": 1}", 1, 1, "lookup_v2", "{\"q\": 1}", NULL, 0},
    {"not an identifier without a list", "9lookup\n{\"q\": 1}", 1, 0, NULL, NULL, "9lookup\n{\"q\": 1}", 0},
    {"plain text without a list", "\n你好！有什么可以帮你？", 1, 0, NULL, NULL, "你好！有什么可以帮你？", 0},
};
#define N_CASES ((int)(sizeof CASES / sizeof CASES[0]))

static void parse_case(const pcase *c, toolcall_result *r) {
    toolcall_parse(c->text, strlen(c->text), c->any_name ? NULL : NAMES, 3, r);
}

static void test_whole(void) {
    for (int i = 0; i < N_CASES; i++) {
        const pcase *c = &CASES[i];
        toolcall_result r;
        parse_case(c, &r);
        int ok = r.is_call == c->is_call &&
                 (c->is_call ? str_eq(r.name, c->name) && str_eq(r.arguments, c->arguments) && !r.content
                             : str_eq(r.content, c->content) && !r.name && !r.arguments);
        if (ok)
            check(ok, "whole: %s", c->what);
        else
            check(ok, "whole: %s (call %d name '%s' args '%s' content '%s')", c->what, r.is_call,
                  r.name ? r.name : "", r.arguments ? r.arguments : "", r.content ? r.content : "");
        toolcall_result_free(&r);
    }
    toolcall_result r;
    toolcall_parse("search\n{}", 9, NAMES, 0, &r);
    check(!r.is_call && str_eq(r.content, "search\n{}"), "whole: an empty name list accepts no call");
    toolcall_result_free(&r);
}

/* ==== Streaming ==== */

typedef struct sink {
    char content[512], name[64], args[512];
    size_t nc, nn, na;
    int starts, bad_order;
    size_t fed; /* bytes fed when the first content / argument byte came */
    size_t first_content_at, first_args_at;
} sink;

static void put(char *buf, size_t *n, size_t cap, const char *t, size_t len) {
    if (*n + len >= cap) abort();
    memcpy(buf + *n, t, len);
    *n += len;
    buf[*n] = 0;
}

static void on_delta(void *user, toolcall_delta_kind kind, const char *text, size_t len) {
    sink *k = user;
    if (kind == TOOLCALL_CONTENT) {
        if (k->starts) k->bad_order = 1;
        if (!k->nc) k->first_content_at = k->fed;
        put(k->content, &k->nc, sizeof k->content, text, len);
    } else if (kind == TOOLCALL_CALL_START) {
        if (k->starts++ || k->nc) k->bad_order = 1;
        put(k->name, &k->nn, sizeof k->name, text, len);
    } else {
        if (!k->starts) k->bad_order = 1;
        if (!k->na) k->first_args_at = k->fed;
        put(k->args, &k->na, sizeof k->args, text, len);
    }
}

/* Feeds c->text in pieces ending at cuts[0..n_cuts) and the end; returns finish's value. */
static int run_stream(const pcase *c, int hold, const size_t *cuts, int n_cuts, sink *k) {
    memset(k, 0, sizeof *k);
    k->first_content_at = k->first_args_at = (size_t)-1;
    toolcall_stream *s = toolcall_stream_new(c->any_name ? NULL : NAMES, 3, hold, on_delta, k);
    size_t len = strlen(c->text), at = 0;
    for (int i = 0; i <= n_cuts; i++) {
        size_t end = i < n_cuts ? cuts[i] : len;
        k->fed = end;
        toolcall_stream_feed(s, c->text + at, end - at);
        at = end;
    }
    int rc = toolcall_stream_finish(s);
    toolcall_stream_free(s);
    return rc;
}

/* Whether the stream's deltas equal the whole parse r. */
static int same_as_whole(const sink *k, int rc, const toolcall_result *r) {
    if (k->bad_order || rc != r->is_call) return 0;
    if (r->is_call) return k->starts == 1 && str_eq(k->name, r->name) && str_eq(k->args, r->arguments) && !k->nc;
    return !k->starts && str_eq(k->nc ? k->content : "", r->content);
}

static void test_stream(void) {
    size_t cuts[512];
    for (int i = 0; i < N_CASES; i++) {
        const pcase *c = &CASES[i];
        size_t len = strlen(c->text);
        toolcall_result r;
        parse_case(c, &r);
        int malformed_call = c->broken;
        for (int hold = 0; hold <= 1; hold++) {
            int bad_split = -1, flagged = 1;
            sink k;
            for (size_t cut = 0; cut <= len; cut++) {
                int rc = run_stream(c, hold, &cut, 1, &k);
                if (!hold && malformed_call) {
                    if (rc != -1) flagged = 0;
                } else if (!same_as_whole(&k, rc, &r) && bad_split < 0) {
                    bad_split = (int)cut;
                }
            }
            for (size_t b = 0; b < len; b++) cuts[b] = b + 1;
            int rc = run_stream(c, hold, cuts, (int)len, &k);
            int bytes_ok = (!hold && malformed_call) ? rc == -1 : same_as_whole(&k, rc, &r);
            if (!hold && malformed_call)
                check(flagged && bytes_ok, "stream (arguments streamed): %s: a malformed call is flagged by finish",
                      c->what);
            else
                check(bad_split < 0 && bytes_ok, "stream (%s): %s: two pieces at every split and byte by byte equal "
                      "the whole parse%s", hold ? "calls held" : "arguments streamed", c->what,
                      bad_split >= 0 ? " (differs at a split)" : "");
        }
        toolcall_result_free(&r);
    }
}

/* Content is emitted once the first line cannot be a name; arguments as they come. */
static void test_stream_latency(void) {
    size_t cuts[512];
    sink k;
    const pcase plain = {"", "\nParis is sunny today.", 0, 0, NULL, NULL, NULL, 0};
    for (size_t b = 0; b < strlen(plain.text); b++) cuts[b] = b + 1;
    run_stream(&plain, 1, cuts, (int)strlen(plain.text), &k);
    check(k.first_content_at == 2, "stream: plain content starts with its first byte (at %zu)", k.first_content_at);
    const pcase prose = {"", "The weather is fine.", 0, 0, NULL, NULL, NULL, 0};
    for (size_t b = 0; b < strlen(prose.text); b++) cuts[b] = b + 1;
    run_stream(&prose, 1, cuts, (int)strlen(prose.text), &k);
    check(k.first_content_at == 1, "stream: a first line that cannot be a name is released at once (at %zu)",
          k.first_content_at);
    const pcase call = {"", "search\n{\"q\": \"cats and dogs\"}", 0, 1, NULL, NULL, NULL, 0};
    for (size_t b = 0; b < strlen(call.text); b++) cuts[b] = b + 1;
    run_stream(&call, 0, cuts, (int)strlen(call.text), &k);
    check(k.first_args_at == 8 && k.starts == 1, "stream: arguments start with the '{' (at %zu)", k.first_args_at);
}

/* ==== Request side ==== */

static void test_requests(const tokenizer *tok, const cJSON *cases) {
    const cJSON *c;
    int n = 0;
    cJSON_ArrayForEach(c, cases) {
        const cJSON *req = cJSON_GetObjectItemCaseSensitive(c, "openai");
        if (!req) continue;
        const char *name = cJSON_GetObjectItemCaseSensitive(c, "name")->valuestring;
        const cJSON *want = cJSON_GetObjectItemCaseSensitive(c, "ids");
        toolcall_prompt p;
        char err[256] = "";
        int *ids = NULL, n_ids = 0, ok = 0;
        if (toolcall_map_request(cJSON_GetObjectItemCaseSensitive(req, "messages"),
                                 cJSON_GetObjectItemCaseSensitive(req, "tools"),
                                 cJSON_GetObjectItemCaseSensitive(req, "tool_choice"), &p, err, sizeof err) == 0) {
            if (chat_encode(tok, p.msgs, p.n_msgs, NULL, NULL, 1, &ids, &n_ids, err, sizeof err) == 0) {
                ok = n_ids == cJSON_GetArraySize(want);
                for (int i = 0; ok && i < n_ids; i++) ok = ids[i] == cJSON_GetArrayItem(want, i)->valueint;
            }
            toolcall_prompt_free(&p);
        }
        check(ok, "request: %s equals HF's ids (%d ids) %s", name, n_ids, err);
        free(ids);
        n++;
    }
    check(n >= 5, "request: %d golden OpenAI cases", n);
}

static void expect_error(const char *json, const char *field) {
    cJSON *req = cJSON_Parse(json);
    toolcall_prompt p;
    char err[256] = "";
    int rc = toolcall_map_request(cJSON_GetObjectItemCaseSensitive(req, "messages"),
                                  cJSON_GetObjectItemCaseSensitive(req, "tools"),
                                  cJSON_GetObjectItemCaseSensitive(req, "tool_choice"), &p, err, sizeof err);
    check(rc == -1 && strstr(err, field), "request error names %s: %s", field, err);
    if (rc == 0) toolcall_prompt_free(&p);
    cJSON_Delete(req);
}

static void test_request_errors(void) {
    const char *tools = "\"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"f\"}}]";
    char buf[512];
    expect_error("{\"messages\": []}", "'messages'");
    expect_error("{\"messages\": [{\"role\": \"robot\", \"content\": \"x\"}]}", "'messages[0].role'");
    expect_error("{\"messages\": [{\"role\": \"user\", \"content\": 5}]}", "'messages[0].content'");
    expect_error("{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\"}]}]}",
                 "'messages[0].content[0].image_url.url'");
    expect_error("{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"a\"}, "
                 "{\"type\": \"input_audio\"}]}]}", "'messages[0].content[1].type'");
    expect_error("{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"assistant\", \"tool_calls\": "
                 "[{\"type\": \"function\", \"function\": {\"name\": \"f\", \"arguments\": {}}}]}]}",
                 "'messages[1].tool_calls[0].function.arguments'");
    expect_error("{\"messages\": [{\"role\": \"tool\", \"tool_call_id\": 3, \"content\": \"a\"}]}",
                 "'messages[0].tool_call_id'");
    snprintf(buf, sizeof buf, "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}], %s, \"tool_choice\": "
             "{\"type\": \"function\", \"function\": {\"name\": \"g\"}}}", tools);
    expect_error(buf, "'tool_choice.function.name'");
    snprintf(buf, sizeof buf, "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}], %s, \"tool_choice\": "
             "\"sometimes\"}", tools);
    expect_error(buf, "'tool_choice'");
    expect_error("{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}], \"tool_choice\": \"required\"}",
                 "'tool_choice'");
    expect_error("{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}], \"tools\": [{\"type\": \"retrieval\"}]}",
                 "'tools[0]'");
    /* GLM-4V: text parts joined by "\n", an image_url part flags its message (the image itself is the caller's) */
    {
        cJSON *q = cJSON_Parse("[{\"role\": \"system\", \"content\": \"s\"}, {\"role\": \"user\", \"content\": "
                               "[{\"type\": \"text\", \"text\": \"a\"}, {\"type\": \"image_url\", \"image_url\": "
                               "{\"url\": \"data:image/png;base64,AAAA\"}}, {\"type\": \"text\", \"text\": \"b\"}]}]");
        toolcall_prompt ip;
        char e2[256] = "";
        int r2 = toolcall_map_request(q, NULL, NULL, &ip, e2, sizeof e2);
        check(r2 == 0 && ip.n_msgs == 2 && !ip.msgs[0].image && ip.msgs[1].image &&
                  strcmp(ip.msgs[1].content, "a\nb") == 0,
              "request: an image_url part flags its message, text parts joined %s", e2);
        if (r2 == 0) toolcall_prompt_free(&ip);
        cJSON_Delete(q);
    }
    /* names: what a call may use after tool_choice */
    snprintf(buf, sizeof buf, "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}], \"tools\": [{\"type\": "
             "\"function\", \"function\": {\"name\": \"f\"}}, {\"type\": \"function\", \"function\": {\"name\": "
             "\"g\"}}], \"tool_choice\": {\"type\": \"function\", \"function\": {\"name\": \"g\"}}}");
    cJSON *req = cJSON_Parse(buf);
    toolcall_prompt p;
    char err[256];
    int rc = toolcall_map_request(cJSON_GetObjectItemCaseSensitive(req, "messages"),
                                  cJSON_GetObjectItemCaseSensitive(req, "tools"),
                                  cJSON_GetObjectItemCaseSensitive(req, "tool_choice"), &p, err, sizeof err);
    check(rc == 0 && p.n_names == 1 && strcmp(p.names[0], "g") == 0 && p.n_msgs == 2,
          "request: a named tool_choice offers that name only");
    if (rc == 0) toolcall_prompt_free(&p);
    cJSON_Delete(req);
}

/* ==== Responses ==== */

static void test_response(void) {
    char a[32], b[32], c[32];
    toolcall_make_id(1, a);
    toolcall_make_id(1, b);
    toolcall_make_id(2, c);
    check(strlen(a) == 29 && strncmp(a, "call_", 5) == 0 && strcmp(a, b) == 0 && strcmp(a, c) != 0,
          "ids: %s, deterministic, differ by seed (%s)", a, c);
    toolcall_result r;
    toolcall_parse("get_weather\n{\"city\": \"北京\"}", strlen("get_weather\n{\"city\": \"北京\"}"), NAMES, 3, &r);
    cJSON *m = toolcall_message_json(&r, a);
    char *s = cJSON_PrintUnformatted(m);
    char want[256];
    snprintf(want, sizeof want, "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"%s\",\"type\":"
             "\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"{\\\"city\\\": \\\"北京\\\"}\"}}]}", a);
    check(strcmp(s, want) == 0, "message JSON of a call: %s", s);
    free(s);
    cJSON_Delete(m);
    toolcall_result_free(&r);
    toolcall_parse("\nhi", 3, NAMES, 3, &r);
    m = toolcall_message_json(&r, a);
    s = cJSON_PrintUnformatted(m);
    check(strcmp(s, "{\"role\":\"assistant\",\"content\":\"hi\"}") == 0, "message JSON of content: %s", s);
    free(s);
    cJSON_Delete(m);
    toolcall_result_free(&r);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: test_tool_calls VOCAB_FILE CASES_JSON\n");
        return 2;
    }
    char err[256];
    tokenizer *tok;
    if (tok_load(&tok, argv[1], err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    size_t len;
    char *text = util_read_file(argv[2], &len, err, sizeof err);
    cJSON *golden = text ? cJSON_ParseWithLength(text, len) : NULL;
    if (!golden) {
        fprintf(stderr, "%s: %s\n", argv[2], text ? "not JSON" : err);
        return 2;
    }
    test_whole();
    test_stream();
    test_stream_latency();
    test_requests(tok, cJSON_GetObjectItemCaseSensitive(golden, "cases"));
    test_request_errors();
    test_response();
    cJSON_Delete(golden);
    free(text);
    tok_free(tok);
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
