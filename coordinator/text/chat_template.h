/* chat_template.h: GLM-4 chat prompt as token ids (glm4-spec.md 4.5), equal to
 * what HF transformers' apply_chat_template renders from glm-4-9b-chat's Jinja
 * template (trim_blocks, lstrip_blocks; shared/glm4-chat-template.md):
 *
 *   [gMASK]<sop>
 *   per message: if it carries tools: <|system|> "\n" preamble, then per tool
 *                  function: "\n## NAME\n\n" tojson(function, indent=4) "\n在调用上述函数时..."
 *                  python / simple_browser / cogview: the template's fixed text
 *                then, if content is non-empty: <|role|> metadata "\n" content
 *   generation prompt: <|assistant|>   (no newline)
 *
 * Role markers are inserted by id; message text is encoded as plain text, so a
 * user writing "<|assistant|>" gets ordinary tokens, never a control token.
 * GLM-4V (glm4v-spec.md 3): the message with the image renders as <|role|>,
 * metadata "\n" encoded alone, <|begin_of_image|> <|endoftext|>
 * <|end_of_image|>, then its content encoded alone (as THUDM's tokenizer
 * does), even when the content is empty. One image per conversation.
 * Golden ids: tests/chat/cases.json (make_chat_golden.py, transformers itself).
 * Known gaps against HF: a JSON number written 1.0 renders as 1 (cJSON keeps no
 * int/float distinction), a null metadata as "" (Jinja would write "None"), an
 * unknown tool type is an error (the template renders nothing for it). */
#ifndef GLMTP_CHAT_TEMPLATE_H
#define GLMTP_CHAT_TEMPLATE_H

#include <cjson/cJSON.h>
#include <stddef.h>

#include "tokenizer.h"

typedef struct chat_message {
    const char *role;     /* system | user | assistant | observation */
    const char *content;  /* may be "" */
    const char *metadata; /* may be NULL (tool name on assistant tool calls) */
    const cJSON *tools;   /* NULL or an array of {"type":"function","function":{...}} */
    int image;            /* GLM-4V: the message carries the conversation's image (below) */
} chat_message;

/* The built-in tool preamble, or the one in DIR/tokenizer_config.json's
 * chat_template when present. Returns a malloc'ed string. */
char *chat_tool_preamble(const char *model_dir);

/* Encodes messages; tools (NULL or an array) are rendered first, as a system
 * block, like tools attached to the first message. *ids is malloc'ed (caller
 * frees). Returns 0, or -1 with a message naming the offending field
 * ("field 'messages[2].role': ...") in err. */
int chat_encode(const tokenizer *t, const chat_message *msgs, int n, const cJSON *tools, const char *preamble,
                int add_generation_prompt, int **ids /* OUT */, int *n_ids /* OUT */, char *err, size_t errlen);

/* The same from JSON: msgs a list of {role, content, metadata?, tools?,
 * image?}, tools NULL or a list. content is a string, or (OpenAI) a list of
 * parts {"type": "text", "text"} and {"type": "image_url", "image_url":
 * {"url"}} (text parts joined by "\n"); "image" (a path: glmtp generate's
 * form) or an image_url part marks the message with the image. Malformed JSON
 * gives -1 and "field 'messages[1].content': ...". */
int chat_encode_json(const tokenizer *t, const cJSON *msgs, const cJSON *tools, const char *preamble,
                     int add_generation_prompt, int **ids /* OUT */, int *n_ids /* OUT */, char *err, size_t errlen);

/* The conversation's image: *src = its "image" path or image_url url (NULL
 * without one; points into msgs), *field its field name for messages.
 * Returns 0, or -1 with err when there are several (GLM-4V takes one; err
 * names the second one's field) or a part is malformed. */
int chat_image_source(const cJSON *msgs, const char **src, char *field, size_t field_len, char *err, size_t errlen);

/* JSON as Python's json.dumps(v, indent=4, ensure_ascii=False) writes it (the
 * template's tojson). Returns a malloc'ed string. */
char *chat_json_indent4(const cJSON *v);

#endif
