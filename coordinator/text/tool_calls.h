/* tool_calls.h: GLM-4-9B-chat function calls <-> OpenAI tool_calls (issue 18 item 3).
 *
 * The model answers a call right after <|assistant|> as
 *     NAME "\n" {JSON arguments}
 * and stops at <|observation|>. A plain answer starts with "\n" instead (the
 * template writes <|assistant|>{metadata}"\n"{content}; the metadata line is
 * empty). This module
 *   - parses a finished output into plain content or one call (toolcall_parse);
 *   - does the same incrementally, emitting OpenAI-style deltas (toolcall_stream);
 *   - maps an OpenAI request (messages with tool_calls, tool results, tools,
 *     tool_choice) to chat_template's message list (toolcall_map_request).
 *
 * What counts as a call (GLM-4's basic_demo/openai_api_server.py
 * process_response, minus its whole-output strip): the first line, trimmed of
 * spaces, tabs and "\r", is a name the request offers (any identifier
 * [A-Za-z_][A-Za-z0-9_-]* when the caller passes no name list), the next byte is
 * '{', and the rest, trimmed of trailing white space, is one JSON object that
 * cJSON accepts with nothing after it. Anything else is plain content, never an
 * error. Arguments are passed through as generated (not re-serialised): vLLM's
 * tool parsers json.dumps() the arguments of a whole parse but stream the raw
 * generated text, so their two paths can differ; passing the text through keeps
 * the streamed pieces equal to the whole parse, and clients parse the string
 * anyway. The stop token (<|observation|>, <|user|>, EOS) does not decide: the
 * GLM-4 demo parses the same way whatever ended the turn. */
#ifndef GLMTP_TOOL_CALLS_H
#define GLMTP_TOOL_CALLS_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

#include "chat_template.h"

/* ==== Whole output ==== */

typedef struct toolcall_result {
    int is_call;     /* 1: name and arguments are set; 0: content is set */
    char *content;   /* plain content (leading "\n" of an empty metadata line dropped) */
    char *name;      /* the function name */
    char *arguments; /* the JSON object as generated, trailing white space trimmed */
} toolcall_result;

/* Parses text (len bytes, the output after <|assistant|> without the stop token).
 * names: the request's function names (n_names of them); names == NULL accepts
 * any identifier, n_names == 0 with names != NULL accepts none (always content).
 * Fills *out with malloc'ed strings (free with toolcall_result_free). Never fails
 * but for out of memory, which aborts. */
void toolcall_parse(const char *text, size_t len, const char *const *names, int n_names,
                    toolcall_result *out /* OUT */);

/* Frees the strings of r (not r itself); NULL and a zeroed result are fine. */
void toolcall_result_free(toolcall_result *r);

/* ==== Streaming ==== */

typedef enum toolcall_delta_kind {
    TOOLCALL_CONTENT,    /* text: a piece of plain content */
    TOOLCALL_CALL_START, /* text: the function name (OpenAI: index 0, id, type "function", name, arguments "") */
    TOOLCALL_ARGUMENTS,  /* text: a piece of the arguments string */
} toolcall_delta_kind;

/* Called for each delta; text is not NUL-terminated and lives only during the call. */
typedef void (*toolcall_emit_fn)(void *user, toolcall_delta_kind kind, const char *text, size_t len);

typedef struct toolcall_stream toolcall_stream;

/* A parser for one output. names as for toolcall_parse (copied). hold_calls: 1
 * holds a call back until the output ends and emits it only if it parses (the
 * stream then always equals toolcall_parse on the whole text, malformed JSON
 * included; costs nothing in practice, as the model stops right after the
 * object); 0 streams the arguments as they come (OpenAI style) once the name
 * line and '{' are seen, and a call whose JSON turns out malformed stays a
 * call, flagged by toolcall_stream_finish. Plain content is never held beyond
 * the first line, and the first line only until it cannot be a name.
 * Returns a parser (free with toolcall_stream_free). */
toolcall_stream *toolcall_stream_new(const char *const *names, int n_names, int hold_calls, toolcall_emit_fn emit,
                                     void *user);

/* Feeds the next len bytes of output text; emits what can be decided. */
void toolcall_stream_feed(toolcall_stream *s, const char *text, size_t len);

/* The output ended: emits what was held back. Returns 1 if the output was a
 * call, 0 if content, -1 if a call was streamed (hold_calls 0) whose arguments
 * are not one valid JSON object. */
int toolcall_stream_finish(toolcall_stream *s);

void toolcall_stream_free(toolcall_stream *s);

/* ==== Requests ==== */

/* An OpenAI chat request as chat_template's messages. Owns everything it points to. */
typedef struct toolcall_prompt {
    chat_message *msgs;
    int n_msgs;
    char **names;  /* function names a call may use: the rendered tools' names */
    int n_names;   /* 0 when no tools are rendered (then parse nothing as a call) */
    char **owned;  /* strings msgs point to */
    int n_owned;
    cJSON *tools;  /* the rendered tools (array), owned; msgs[0].tools points here */
} toolcall_prompt;

/* Maps messages (array of {role, content, tool_calls?, tool_call_id?, name?}),
 * tools (NULL or an array of {"type":"function","function":{name,...}}) and
 * tool_choice (NULL, "auto", "none", "required" or
 * {"type":"function","function":{"name":N}}) to *out:
 *   - rendered tools: all of them for auto/required/absent, only N for a named
 *     choice, none for "none" (as GLM-4's openai_api_server does); they go
 *     first, as a system message with empty content and the tools (which
 *     chat_template renders as the tools block alone). Neither "required" nor a
 *     named choice is enforced in the prompt (the HF template has no way to):
 *     the caller gets only the rendered names in out->names, so nothing else
 *     parses as a call;
 *   - system/user: same role, content a string or a list of parts: text parts
 *     joined by "\n" (vLLM's "string" content format), an image_url part (or
 *     glmtp's "image": PATH) setting the message's image flag (GLM-4V); the
 *     image itself is the caller's (chat_image_source, image_input.h), and any
 *     other part type is an error naming it;
 *   - assistant with tool_calls: its content (when non-empty) as an assistant
 *     message, then per call an assistant message with metadata = the name and
 *     content = the arguments string (GLM-4's history form; it renders exactly
 *     the text the model generated);
 *   - tool (and the legacy "function"): an observation with the content.
 * Returns 0, or -1 with err naming the field ("field 'messages[2].tool_calls[0].function.name': ...").
 * out is filled only on success (free with toolcall_prompt_free). */
int toolcall_map_request(const cJSON *messages, const cJSON *tools, const cJSON *tool_choice,
                         toolcall_prompt *out /* OUT */, char *err, size_t errlen);

/* Frees what p owns; a zeroed prompt is fine. */
void toolcall_prompt_free(toolcall_prompt *p);

/* An OpenAI tool-call id, "call_" + 24 characters [0-9a-zA-Z] derived from seed
 * (e.g. request id and call index mixed): deterministic, no global state. */
void toolcall_make_id(uint64_t seed, char out[32] /* OUT */);

/* The OpenAI assistant message for a parse: {"role":"assistant","content":...}
 * or {"role":"assistant","content":null,"tool_calls":[{"id":id,"type":"function",
 * "function":{"name":...,"arguments":...}}]}. Returns a new cJSON (caller deletes). */
cJSON *toolcall_message_json(const toolcall_result *r, const char *id);

#endif
