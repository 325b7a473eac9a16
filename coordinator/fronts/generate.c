/* glmtp generate: batch generation from a JSONL file (or one --ids prompt).
 * Rank 0 drives; the other ranks follow its steps (engine_follow).
 *
 * A batch job loses nothing:
 * - Output first. The output file is opened (created, or truncated without
 *   --resume) before anything else; a path that cannot be written fails at
 *   once with the path and errno, before the ranks load any weights.
 * - Streamed input, a bounded window. The input is read twice: a first pass
 *   parses each line for its key only (below; duplicates are refused, naming
 *   both lines, before any work), the second reads at most --window W lines
 *   ahead of the last record written, parses and tokenizes them and feeds
 *   them to the scheduler as they come (engine/gen_batch.h gen_stream over
 *   sched.h), so an input larger than memory runs in the memory of W lines
 *   (plus one key per line for the duplicate check).
 * - Records in input order, each written as it can be. A finished request
 *   waits in the window until every line before it is written (a reorder
 *   buffer of at most W lines), then its record goes out with one write(2)
 *   of the whole line on an O_APPEND descriptor. Input order keeps the file
 *   what an uninterrupted run writes, byte for byte, across kills and
 *   resumes, and makes it a prefix of the final file at every moment; the
 *   cost is head-of-line blocking: a request much longer than W others holds
 *   the window full, and the batch shrinks until it ends (raise --window).
 * - Never a torn line from this version, except one: Linux may cut a write
 *   of more than a page short when SIGKILL arrives mid-copy, and older
 *   versions wrote through stdio. --resume therefore drops any last line
 *   that lacks its newline (ftruncate, and says so); its request runs again.
 * - --resume: the existing output's records are read, their keys collected,
 *   and input lines whose key is there are skipped. A line's key is its
 *   "id" value as compact JSON (cJSON's unformatted print: 7 and "7" differ)
 *   when the line has an id that is not null; otherwise "line N", its 1-based
 *   line number in the input (blank lines count), which its record then
 *   carries as "line": N. Sampling is seeded per request (the line's seed,
 *   or --seed plus its line number) and a request's tokens do not depend on
 *   its batch (sched.h), so a job killed at any moment and resumed ends with
 *   the records of an uninterrupted run. Records are fsynced at the end only:
 *   a machine crash may lose the last ones, which --resume recomputes.
 * The format seam: input_key and parse_line turn an input line into a key
 * and a request, record_key and format_record a finished request into an
 * output line and back into its key.
 * OpenAI batch files: a line that is an object with "custom_id" and "body"
 * (decided per line) is mapped by the HTTP server's code (openai_map.h) and
 * answered with an OpenAI batch output line; its key is its custom_id
 * ("custom_id " + compact JSON), and its record's ids derive from it. */
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../worker/util.h"
#include "../../worker/log.h"
#include "../base/args.h"
#include "../base/commands.h"
#include "../engine/engine.h"
#include "../engine/capacity.h"
#include "../engine/gen_batch.h"
#include "../engine/kvstore.h"
#include "../text/chat_template.h"
#include "openai_map.h"
#include "requests.h"

typedef struct gen_cli {
    const char *dir, *input, *output, *ids, *image, *tok_path, *device, *comm_kind;
    const char *snap_dir; /* --kv-snapshot-dir */
    int threads, block_size, step_tokens, kv_tokens, ignore_eos, no_prefix_cache, max_model_len;
    int window, resume; /* --window, --resume */
    double mem_util;
    int kv_dtype; /* --kv-cache-dtype */
    req_defaults d;
} gen_cli;

static const args_opt gen_opts[] = {
    {"--model", "DIR", "checkpoint directory (config.json, *.safetensors, tokenizer.model); required"},
    {"--input", "FILE.jsonl", "one request per line (see below); or --ids"},
    {"--ids", "1,2,3", "one request of these token ids instead of --input"},
    {"--image", "FILE", "with --ids (GLM-4V): the image their begin-of-image, placeholder, end-of-image ids place"},
    {"--output", "FILE.jsonl", "where the records go, in input order, each as soon as the lines before it are out (default: stdout)"},
    {"--window", "N", "input lines held at once: read, running, or finished and waiting for an earlier line's record (default 256)"},
    {"--resume", NULL, "keep the records already in --output FILE, drop a torn last line, and run only the lines whose id (or line number, for lines without one) has no record"},
    {"--tokenizer", "FILE", "tokenizer.model to use instead of the one in DIR"},
    {"--max-new-tokens", "N", "new tokens per request (default: generation_config.json, else 256; at most the room left in the context)"},
    {"--temperature", "T", "sampling temperature, 0 = greedy (default: generation_config.json, else greedy)"},
    {"--top-p", "P", "nucleus sampling (default: generation_config.json, else 1)"},
    {"--top-k", "K", "top-k sampling, 0 = off (default: generation_config.json, else 0)"},
    {"--seed", "S", "base seed of sampled requests (default 0)"},
    {"--ignore-eos", NULL, "keep generating past end-of-sequence tokens"},
    {"--step-tokens", "N", "tokens per step, prefill chunks included (default 512)"},
    {"--no-prefix-cache", NULL, "do not reuse the KV blocks of a prompt prefix seen before"},
    {"--kv-snapshot-dir", "DIR", "KV snapshots of prefixes on disk: requests with keep_prefix save theirs there; at start-up and on a cache miss they are loaded instead of recomputed"},
    {"--max-model-len", "N", "longest request (prompt + new tokens; default: the model's seq_length); with --kv-tokens it must fit the pool"},
    {NULL, NULL, NULL},
};

const args_spec cmd_generate_spec = {
    "glmtp generate",
    "--model DIR --input prompts.jsonl [--output out.jsonl] | --ids 1,2,3 [options]",
    "Batch generation: one JSON request per input line, one record per line out, in input order, each written as\n"
    "soon as the lines before it are; --resume continues a job that was stopped.",
    {gen_opts, args_engine_opts, args_log_opts, NULL},
    "request lines: {\"id\": 1, \"prompt\": \"...\"} | {\"id\": 2, \"messages\": [{\"role\": \"user\", \"content\": \"...\"}],\n"
    "  \"tools\": [...]} | {\"id\": 3, \"input_ids\": [...]}; optional max_new_tokens (or max_tokens), temperature,\n"
    "  top_p, top_k, seed, stop, keep_prefix (true or N tokens; with --kv-snapshot-dir). Any other key is an\n"
    "  error naming it.\n"
    "records: {\"id\", \"line\"? (lines without an id), \"text\", \"token_ids\", \"finish_reason\": stop|length|error,\n"
    "  \"error\"?, \"usage\"}\n"
    "--resume keys: a line's id as compact JSON, or its line number when it has none; ids must be unique.\n"
    "OpenAI batch lines {\"custom_id\", \"method\": \"POST\", \"url\": \"/v1/chat/completions\" | \"/v1/completions\",\n"
    "  \"body\"} (as vllm run-batch) get OpenAI batch output lines {\"id\", \"custom_id\", \"response\": {status_code,\n"
    "  request_id, body}, \"error\"}; their --resume key is the custom_id.\n",
};

static int parse_cli(comm *c, gen_cli *o, int argc, char **argv) {
    args a;
    (void)c; /* every rank parses the same argv; rank 0 reports */
    args_init(&a, &cmd_generate_spec, argc, argv);
    memset(o, 0, sizeof *o);
    o->dir = args_str(&a, "--model", NULL);
    req_defaults_load(&o->d, o->dir ? o->dir : ".");
    o->input = args_str(&a, "--input", NULL);
    o->output = args_str(&a, "--output", "-");
    o->ids = args_str(&a, "--ids", NULL);
    o->image = args_str(&a, "--image", NULL);
    o->tok_path = args_str(&a, "--tokenizer", NULL);
    o->d.max_new = (int)args_int(&a, "--max-new-tokens", o->d.max_new, 1, 1 << 30);
    o->d.temperature = (float)args_num(&a, "--temperature", o->d.temperature, 0.0, 1e4);
    o->d.top_p = (float)args_num(&a, "--top-p", o->d.top_p, 1e-9, 1.0);
    o->d.top_k = (int)args_int(&a, "--top-k", o->d.top_k, 0, 1 << 30);
    o->d.seed = (uint64_t)args_int(&a, "--seed", 0, 0, 2147483647L);
    o->ignore_eos = args_flag(&a, "--ignore-eos");
    o->no_prefix_cache = args_flag(&a, "--no-prefix-cache");
    o->snap_dir = args_str(&a, "--kv-snapshot-dir", NULL);
    o->threads = (int)args_int(&a, "--threads", 0, 0, 1024);
    o->device = args_str(&a, "--device", "cpu");
    o->comm_kind = args_str(&a, "--comm", NULL);
    o->block_size = (int)args_int(&a, "--block-size", 16, 1, 1 << 20);
    o->step_tokens = (int)args_int(&a, "--step-tokens", 512, 1, 1 << 24);
    o->kv_tokens = (int)args_int(&a, "--kv-tokens", 0, 1, 1 << 30);
    o->mem_util = args_num(&a, "--gpu-memory-utilization", ENGINE_GPU_MEM_UTIL, 0.01, 1.0);
    o->max_model_len = (int)args_int(&a, "--max-model-len", 0, 1, 1 << 30);
    o->kv_dtype = args_kv_dtype(&a);
    o->window = (int)args_int(&a, "--window", 256, 1, 1 << 20);
    o->resume = args_flag(&a, "--resume");
    int rc = 0;
    if (!a.failed && !o->dir) snprintf(a.err, sizeof a.err, "--model DIR is required"), a.failed = 1;
    if (!a.failed && !!o->input == !!o->ids)
        snprintf(a.err, sizeof a.err, "give --input FILE.jsonl or --ids 1,2,3"), a.failed = 1;
    if (!a.failed && o->image && !o->ids)
        snprintf(a.err, sizeof a.err, "--image goes with --ids (in --input lines: \"image\")"), a.failed = 1;
    if (!a.failed && o->resume && strcmp(o->output, "-") == 0)
        snprintf(a.err, sizeof a.err, "--resume needs --output FILE (the records to keep)"), a.failed = 1;
    if (args_finish(&a)) {
        log_error_agreed("generate: %s (glmtp generate --help lists the options)", a.err);
        rc = 1;
    }
    args_free(&a);
    return rc;
}

/* ==== The format seam: input line -> key and request; request -> record -> key ==== */

/* The key of an input line (see the header comment): its "id" as compact JSON
 * when present and not null, else "line N". A line that is not JSON has
 * no id. Returns a malloc'ed string (the caller frees it). */
static char *input_key(const char *text, size_t len, int line_no) {
    cJSON *o = cJSON_ParseWithLength(text, len);
    if (oai_batch_is_line(o)) { /* an OpenAI batch line: its custom_id */
        char *k = oai_batch_key(cJSON_GetObjectItemCaseSensitive(o, "custom_id"));
        cJSON_Delete(o);
        return k;
    }
    const cJSON *id = cJSON_IsObject(o) ? cJSON_GetObjectItemCaseSensitive(o, "id") : NULL;
    char *key = id && !cJSON_IsNull(id) ? cJSON_PrintUnformatted(id) : NULL;
    cJSON_Delete(o);
    if (!key) {
        key = malloc(24);
        if (key) snprintf(key, 24, "line %d", line_no);
    }
    if (!key) abort();
    return key;
}

/* One input line into a request (never fails: problems land in r->error). */
static void parse_line(const req_context *ctx, const char *text, size_t len, int line_no, req_line *r /* OUT */) {
    cJSON *o = cJSON_ParseWithLength(text, len);
    if (oai_batch_is_line(o)) oai_batch_parse(ctx, o, line_no, r);
    else req_parse(ctx, text, len, line_no, r);
    cJSON_Delete(o);
}

/* Frees a parsed line (the batch part is generate's: requests.c knows none). */
static void line_free(req_line *r) {
    oai_batch_free(r->batch);
    r->batch = NULL;
    req_line_free(r);
}

/* A finished request's record: one JSON line, newline included; the caller
 * frees it. */
static char *format_record(const req_line *r) {
    if (r->batch) return oai_batch_record(r); /* an OpenAI batch output line */
    cJSON *o = cJSON_CreateObject();
    int has_id = r->id && !cJSON_IsNull(r->id);
    cJSON_AddItemToObject(o, "id", has_id ? cJSON_Duplicate(r->id, 1) : cJSON_CreateNull());
    if (!has_id) cJSON_AddNumberToObject(o, "line", r->line_no); /* the --resume key of a line without an id */
    cJSON_AddStringToObject(o, "text", r->g.text ? r->g.text : "");
    cJSON_AddItemToObject(o, "token_ids", cJSON_CreateIntArray(r->g.out ? r->g.out : (int[]){0}, r->g.n_out));
    cJSON_AddStringToObject(o, "finish_reason", r->error ? "error" : r->g.finish ? r->g.finish : "length");
    if (r->error) cJSON_AddStringToObject(o, "error", r->error);
    cJSON *u = cJSON_AddObjectToObject(o, "usage");
    cJSON_AddNumberToObject(u, "prompt_tokens", r->error ? 0 : r->g.n_prompt);
    cJSON_AddNumberToObject(u, "completion_tokens", r->g.n_out);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    size_t n = s ? strlen(s) : 0;
    char *line = s ? realloc(s, n + 2) : NULL;
    if (!line) abort();
    memcpy(line + n, "\n", 2);
    return line;
}

/* The key of a record read back for --resume (the key of the line that made
 * it), or NULL when the text is not a record (the caller names the line). */
static char *record_key(const char *text, size_t len) {
    cJSON *o = cJSON_ParseWithLength(text, len);
    const cJSON *id = cJSON_IsObject(o) ? cJSON_GetObjectItemCaseSensitive(o, "id") : NULL;
    const cJSON *ln = cJSON_IsObject(o) ? cJSON_GetObjectItemCaseSensitive(o, "line") : NULL;
    const cJSON *cid = cJSON_IsObject(o) ? cJSON_GetObjectItemCaseSensitive(o, "custom_id") : NULL;
    char *key = NULL;
    if (cid && cJSON_GetObjectItemCaseSensitive(o, "response")) { /* an OpenAI batch output line */
        key = oai_batch_key(cid);
    } else if (id && !cJSON_IsNull(id)) {
        key = cJSON_PrintUnformatted(id);
        if (!key) abort();
    } else if (cJSON_IsNumber(ln) && ln->valuedouble >= 1 && ln->valuedouble < 2147483647.0) {
        key = malloc(24);
        if (!key) abort();
        snprintf(key, 24, "line %d", (int)ln->valuedouble);
    }
    cJSON_Delete(o);
    return key;
}

/* ==== Key sets: record keys already written, input keys seen ==== */

typedef struct keyset {
    char **key; /* open addressing, cap slots (a power of two), owned */
    int *line;  /* the line each key came from */
    size_t cap, n;
} keyset;

static uint64_t key_hash(const char *s) {
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

static size_t keyset_slot(const keyset *ks, const char *key) {
    size_t i = (size_t)key_hash(key) & (ks->cap - 1);
    while (ks->key[i] && strcmp(ks->key[i], key) != 0) i = (i + 1) & (ks->cap - 1);
    return i;
}

/* The line key was added from, or 0 when it is not in ks. */
static int keyset_find(const keyset *ks, const char *key) {
    if (!ks->cap) return 0;
    size_t i = keyset_slot(ks, key);
    return ks->key[i] ? ks->line[i] : 0;
}

/* Adds key (taking ownership) from line; when it is there already, frees key
 * and returns the line it came from first, else returns 0. */
static int keyset_add(keyset *ks, char *key, int line) {
    if (2 * (ks->n + 1) > ks->cap) {
        keyset old = *ks;
        ks->cap = old.cap ? 2 * old.cap : 64;
        ks->key = calloc(ks->cap, sizeof *ks->key);
        ks->line = calloc(ks->cap, sizeof *ks->line);
        if (!ks->key || !ks->line) abort();
        for (size_t i = 0; i < old.cap; i++)
            if (old.key[i]) {
                size_t j = keyset_slot(ks, old.key[i]);
                ks->key[j] = old.key[i], ks->line[j] = old.line[i];
            }
        free(old.key);
        free(old.line);
    }
    size_t i = keyset_slot(ks, key);
    if (ks->key[i]) {
        free(key);
        return ks->line[i];
    }
    ks->key[i] = key, ks->line[i] = line, ks->n++;
    return 0;
}

static void keyset_free(keyset *ks) {
    for (size_t i = 0; i < ks->cap; i++) free(ks->key[i]);
    free(ks->key);
    free(ks->line);
    memset(ks, 0, sizeof *ks);
}

/* ==== Input lines, read one at a time ==== */

typedef struct in_reader {
    FILE *f;          /* --input, or NULL for the one --ids line */
    const char *path; /* for messages */
    char *mem;        /* the --ids line (owned), given once */
    char *buf;        /* getline's buffer (owned) */
    size_t cap;
    int line_no, failed;
} in_reader;

/* Opens --input (or makes the --ids line). Returns 0, or 1 after printing why. */
static int in_open(in_reader *in, const gen_cli *o) {
    memset(in, 0, sizeof *in);
    in->path = o->input ? o->input : "--ids";
    if (o->input) {
        if (!(in->f = fopen(o->input, "r"))) {
            fprintf(stderr, "glmtp: generate: %s: cannot open the input: %s\n", o->input, strerror(errno));
            return 1;
        }
        return 0;
    }
    args a;
    args_init(&a, NULL, 0, NULL);
    int *ids, k;
    if (args_int_list(&a, "--ids", o->ids, &ids, &k)) {
        fprintf(stderr, "glmtp: generate: %s\n", a.err);
        args_free(&a);
        return 1;
    }
    args_free(&a);
    cJSON *obj = cJSON_CreateObject();
    cJSON_AddItemToObject(obj, "input_ids", cJSON_CreateIntArray(ids, k));
    if (o->image) cJSON_AddStringToObject(obj, "image", o->image);
    in->mem = cJSON_PrintUnformatted(obj);
    cJSON_Delete(obj);
    free(ids);
    if (!in->mem) abort();
    return 0;
}

/* The next non-blank line (*text valid until the next call; not
 * NUL-terminated at *len), its number in in->line_no. Returns 1, or 0 at the
 * end or on a read error (in->failed set, printed). */
static int in_next(in_reader *in, const char **text, size_t *len) {
    if (!in->f) {
        if (!in->mem || in->line_no) return 0;
        in->line_no = 1;
        *text = in->mem, *len = strlen(in->mem);
        return 1;
    }
    for (;;) {
        errno = 0;
        ssize_t n = getline(&in->buf, &in->cap, in->f);
        if (n < 0) {
            if (ferror(in->f)) {
                fprintf(stderr, "glmtp: generate: %s: line %d: read failed: %s\n", in->path, in->line_no + 1,
                        strerror(errno));
                in->failed = 1;
            }
            return 0;
        }
        in->line_no++;
        size_t l = (size_t)n;
        if (l && in->buf[l - 1] == '\n') l--;
        int blank = 1;
        for (size_t i = 0; i < l && blank; i++) blank = in->buf[i] == ' ' || in->buf[i] == '\t' || in->buf[i] == '\r';
        if (blank) continue;
        *text = in->buf, *len = l;
        return 1;
    }
}

static void in_close(in_reader *in) {
    if (in->f) fclose(in->f);
    free(in->mem);
    free(in->buf);
    memset(in, 0, sizeof *in);
}

/* ==== The output file ==== */

/* Opens --output before any work: created or truncated, or with --resume
 * created or kept. Returns the descriptor (1 for stdout), or -1 after
 * printing the path and errno. */
static int out_open(const gen_cli *o) {
    if (strcmp(o->output, "-") == 0) return 1;
    int flags = O_CREAT | O_APPEND | O_CLOEXEC | (o->resume ? O_RDWR : O_WRONLY | O_TRUNC);
    int fd = open(o->output, flags, 0644);
    if (fd < 0)
        fprintf(stderr, "glmtp: generate: %s: cannot open the output file: %s\n", o->output, strerror(errno));
    return fd;
}

/* Writes one whole record with one write(2) (O_APPEND: at the end, never
 * between another's bytes); a short write is continued. Returns 0, or 1
 * after printing the path and errno. A record cut short (a full disk takes
 * what fits, then ENOSPC) is cut off again in a regular file, so that the
 * file never ends in a torn line. */
static int out_write(int fd, const char *path, const char *line) {
    size_t len = strlen(line), off = 0;
    struct stat st;
    off_t start = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) ? st.st_size : -1;
    while (off < len) {
        ssize_t k = write(fd, line + off, len - off);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            int e = k < 0 ? errno : 0;
            const char *undo = "";
            if (off > 0 && start >= 0)
                undo = ftruncate(fd, start) == 0 ? " (the partial record was cut off)"
                                                 : " (and the partial record could not be cut off)";
            fprintf(stderr, "glmtp: generate: %s: write failed: %s%s\n", path, e ? strerror(e) : "no progress", undo);
            return 1;
        }
        off += (size_t)k;
    }
    return 0;
}

/* --resume: reads the records in the output (fd open read-write), adds each
 * one's key to done, and truncates a torn last line (no newline). Returns 0,
 * or 1 after printing the file, line and problem (a line that is not a
 * record, two records of one key). */
static int out_scan(int fd, const char *path, keyset *done) {
    int fd2 = dup(fd);
    FILE *f = fd2 < 0 ? NULL : fdopen(fd2, "r");
    if (!f) {
        fprintf(stderr, "glmtp: generate: %s: cannot read the output back: %s\n", path, strerror(errno));
        if (fd2 >= 0) close(fd2);
        return 1;
    }
    char *buf = NULL;
    size_t cap = 0;
    off_t good = 0; /* end of the last whole line */
    int line = 0, rc = 0;
    ssize_t n;
    if (lseek(fd2, 0, SEEK_SET) < 0) {
        fprintf(stderr, "glmtp: generate: %s: seek failed: %s\n", path, strerror(errno));
        rc = 1;
    }
    while (!rc && (n = getline(&buf, &cap, f)) > 0) {
        line++;
        if (buf[n - 1] != '\n') { /* torn: cut off mid-write */
            fprintf(stderr, "glmtp: generate: %s: line %d: torn last record (%zd bytes without a newline, a write cut "
                    "short by a kill): removed, its request runs again\n", path, line, n);
            if (ftruncate(fd, good) != 0) {
                fprintf(stderr, "glmtp: generate: %s: truncate to %lld bytes failed: %s\n", path, (long long)good,
                        strerror(errno));
                rc = 1;
            }
            break;
        }
        char *key = record_key(buf, (size_t)n - 1);
        int first;
        if (!key) {
            fprintf(stderr, "glmtp: generate: %s: line %d: not a record of glmtp generate (a JSON object with an "
                    "\"id\", or \"line\" when the id is null); not resuming into this file\n", path, line);
            rc = 1;
        } else if ((first = keyset_add(done, key, line))) {
            fprintf(stderr, "glmtp: generate: %s: lines %d and %d are records of the same request; not resuming "
                    "into this file\n", path, first, line);
            rc = 1;
        }
        good += n;
    }
    if (!rc && ferror(f)) {
        fprintf(stderr, "glmtp: generate: %s: read failed: %s\n", path, strerror(errno));
        rc = 1;
    }
    free(buf);
    fclose(f);
    return rc;
}

/* ==== The first pass over the input: keys, duplicates, what is left to do ==== */

/* Reads every line's key: refuses duplicate keys (each pair named, up to
 * ten), marks in *skip (OUT, malloc'ed, indexed by line number) the lines
 * whose key is in done, counts in *n_todo (OUT) the others and in *n_done
 * the lines skipped. Returns 0, or 1 after printing why. */
static int scan_input(const gen_cli *o, const keyset *done, unsigned char **skip, int *n_todo, int *n_done) {
    in_reader in;
    keyset seen = {0};
    int n_dup = 0, rc = 0;
    size_t cap = 0;
    const char *text;
    size_t len;
    *skip = NULL, *n_todo = 0, *n_done = 0;
    if (in_open(&in, o)) return 1;
    while (in_next(&in, &text, &len)) {
        char *key = input_key(text, len, in.line_no);
        if ((size_t)in.line_no >= cap) {
            size_t nc = cap ? 2 * cap : 1024;
            unsigned char *s = realloc(*skip, nc);
            if (!s) abort();
            memset(s + cap, 0, nc - cap);
            *skip = s, cap = nc;
        }
        if (keyset_find(done, key)) {
            (*skip)[in.line_no] = 1;
            (*n_done)++;
        } else {
            (*n_todo)++;
        }
        char *shown = strdup(key);
        int first = keyset_add(&seen, key, in.line_no);
        if (first && ++n_dup <= 10)
            fprintf(stderr, "glmtp: generate: %s: lines %d and %d have the same id %s (--resume finds records by "
                    "id: give each line its own)\n", in.path, first, in.line_no, shown);
        free(shown);
    }
    if (n_dup > 10) fprintf(stderr, "glmtp: generate: %s: %d duplicate ids in all\n", in.path, n_dup);
    if (n_dup || in.failed) rc = 1;
    if (done->n > (size_t)*n_done)
        fprintf(stderr, "glmtp: generate: %s holds %zu records of no line of %s (kept)\n", o->output,
                done->n - (size_t)*n_done, in.path);
    in_close(&in);
    keyset_free(&seen);
    return rc;
}

/* ==== The second pass: a window of lines feeding gen_stream ==== */

enum { SLOT_READ, SLOT_GIVEN, SLOT_DONE };

typedef struct job_slot {
    req_line r;
    int state;
    char name[32];
} job_slot;

/* The window: ring[s % window] holds line s (s counts the lines that run,
 * from 0): head is the oldest not yet written, given the next to hand to
 * gen_stream, tail the next to read. */
typedef struct gen_job {
    const gen_cli *o;
    const req_context *ctx;
    engine *e; /* NULL until the ranks are up (no gen_fits before) */
    in_reader in;
    const unsigned char *skip; /* by line number: a record is already out */
    job_slot *ring;
    long head, given, tail;
    int window, eof, peak, out_fd, out_failed;
    int n_written, n_err, kv_tokens;
} gen_job;

/* Reads and parses the next line to run into the window's tail. Returns 1,
 * or 0 at the end of the input. */
static int job_read(gen_job *j) {
    const char *text;
    size_t len;
    for (;;) {
        if (!in_next(&j->in, &text, &len)) {
            j->eof = 1;
            return 0;
        }
        if (!j->skip || !j->skip[j->in.line_no]) break;
    }
    job_slot *s = &j->ring[j->tail % j->window];
    parse_line(j->ctx, text, len, j->in.line_no, &s->r);
    s->r.g.ignore_eos |= j->o->ignore_eos; /* a batch line's body may ask too */
    s->state = SLOT_READ;
    snprintf(s->name, sizeof s->name, "line %d", s->r.line_no);
    j->tail++;
    if (j->tail - j->head > j->peak) j->peak = (int)(j->tail - j->head);
    return 1;
}

/* Reads lines until the window is full or the input ends. */
static void job_fill(gen_job *j) {
    while (!j->eof && j->tail - j->head < j->window && job_read(j)) {
    }
}

/* gen_feed.next: the next line of the window, refused lines (parse errors,
 * too large for the KV pool) handed over finished. */
static gen_request *job_next(void *user, const char **name) {
    gen_job *j = user;
    if (j->out_failed) return NULL; /* nothing more can be kept */
    if (j->given == j->tail) job_fill(j);
    if (j->given == j->tail) return NULL;
    job_slot *s = &j->ring[j->given++ % j->window];
    req_line *r = &s->r;
    if (!r->error && !gen_fits(j->e, r->g.n_prompt, r->g.max_new)) {
        char err[512];
        snprintf(err, sizeof err, "line %d: prompt of %d tokens plus max_new_tokens %d need more KV cache than "
                 "--kv-tokens %d holds", r->line_no, r->g.n_prompt, r->g.max_new, j->kv_tokens);
        r->error = strdup(err);
        if (!r->error) abort();
    }
    if (r->error) r->g.finish = "error";
    s->state = SLOT_GIVEN;
    *name = s->name;
    return &r->g;
}

/* Writes the records at the head of the window that are done, in order. */
static void job_flush(gen_job *j) {
    while (j->head < j->given && j->ring[j->head % j->window].state == SLOT_DONE) {
        job_slot *s = &j->ring[j->head % j->window];
        if (!j->out_failed) {
            char *line = format_record(&s->r);
            j->out_failed = out_write(j->out_fd, j->o->output, line);
            free(line);
            if (!j->out_failed) j->n_written++;
        }
        if (s->r.error) {
            fprintf(stderr, "glmtp: generate: %s\n", s->r.error);
            j->n_err++;
        }
        line_free(&s->r);
        j->head++;
    }
}

/* gen_feed.done: marks the line done and writes what is in order. */
static void job_done(void *user, gen_request *g) {
    gen_job *j = user;
    job_slot *s = (job_slot *)(void *)((char *)g - offsetof(job_slot, r.g));
    s->state = SLOT_DONE;
    job_flush(j);
}

/* Frees the lines still in the window (after a failure). */
static void job_free(gen_job *j) {
    for (long s = j->head; j->ring && s < j->tail; s++) line_free(&j->ring[s % j->window].r);
    free(j->ring);
    in_close(&j->in);
    j->ring = NULL;
}

/* The KV pool (rank 0's figure, before the ranks load): the lines in the
 * window at once, plus one request of the longest allowed size when more
 * lines follow, so that every later line fits alone; at most a quarter of
 * this machine's memory per rank (on CPU the cache is fp32). --kv-tokens
 * overrides it. */
static int kv_pool_tokens(const gen_cli *o, const glm_config *cfg, const comm *c, const gen_job *j) {
    long need = 0;
    for (long s = j->head; s < j->tail; s++) {
        const req_line *r = &j->ring[s % j->window].r;
        if (!r->error) need += r->g.n_prompt + r->g.max_new + o->block_size;
    }
    if (!j->eof) need += j->ctx->seq_len + o->block_size;
    long cap = 1L << 30;
    glm_shard sh;
    shard_plan(&sh, cfg, c->size, 0);
    double per_token = 2.0 * cfg->n_layers * sh.nkv * cfg->head_dim * 4.0;
    double budget = 0.25 * (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE) / c->local_size;
    if (budget / per_token < (double)cap) cap = (long)(budget / per_token);
    int kv = o->kv_tokens ? o->kv_tokens : (int)(need < cap ? need : cap);
    return kv < o->block_size ? o->block_size : kv;
}

/* Rank 0 before the ranks start: the output (first), the records to keep,
 * config and tokenizer, the first pass over the input, the first window.
 * Returns 0, or 1 after printing why. */
static int prepare(const gen_cli *o, comm *c, glm_config *cfg, tokenizer **tok, char **preamble, req_context *ctx,
                   keyset *done, unsigned char **skip, int *n_todo, int *n_kept, gen_job *j) {
    char path[4096], err[2048];
    j->out_fd = out_open(o);
    if (j->out_fd < 0) return 1;
    if (o->resume && out_scan(j->out_fd, o->output, done)) return 1;
    snprintf(path, sizeof path, "%s/tokenizer.model", o->dir);
    const char *tp = o->tok_path ? o->tok_path : path;
    if (config_load(cfg, o->dir, err, sizeof err)) {
        engine_error(c, "%s", err);
        return 1;
    }
    if (o->max_model_len > cfg->seq_len) {
        engine_error(c, "generate: --max-model-len %d exceeds the model's context length %d (seq_length in "
                     "config.json)", o->max_model_len, cfg->seq_len);
        return 1;
    }
    if ((o->tok_path || access(tp, F_OK) == 0) && tok_load(tok, tp, err, sizeof err)) {
        engine_error(c, "%s", err);
        return 1;
    }
    snprintf(path, sizeof path, "%s/%s", o->dir, MAKE_MODEL_MARKER);
    if (access(path, F_OK) == 0)
        log_msg(LOG_INFO, "generate: %s holds random weights (made by glmtp make-model): the text will be "
                          "gibberish, the pipeline is the real one", o->dir);
    *preamble = chat_tool_preamble(o->dir);
    *ctx = (req_context){&o->d, *tok, *preamble, o->max_model_len ? o->max_model_len : cfg->seq_len,
                         *tok ? tok_n_total(*tok) : cfg->vocab, o->max_model_len ? cfg->seq_len : 0, cfg, 1};
    if (ctx->n_vocab > cfg->vocab) ctx->n_vocab = cfg->vocab;
    if (scan_input(o, done, skip, n_todo, n_kept)) return 1;
    if (o->resume)
        log_msg(LOG_INFO, "generate: --resume: %s holds %zu records, %d lines of %s already done, %d to run",
                o->output, done->n, *n_kept, o->input ? o->input : "--ids", *n_todo);
    j->o = o, j->ctx = ctx, j->skip = *skip, j->window = o->window;
    if (in_open(&j->in, o)) return 1;
    j->ring = calloc((size_t)j->window, sizeof *j->ring);
    if (!j->ring) abort();
    job_fill(j);
    return j->in.failed;
}

/* Rank 0 once the ranks are up: streams the window through the scheduler.
 * Returns the exit code. */
static int run_job(const gen_cli *o, engine *e, const tokenizer *tok, gen_job *j, int n_todo, int n_kept) {
    j->e = e;
    pcache_set_enabled(e->pc, !o->no_prefix_cache);
    if (o->snap_dir && !(e->snap = kvstore_open(e, o->snap_dir))) {
        engine_finish(e);
        return 1;
    }
    gen_options go = {o->step_tokens, 1, NULL, NULL};
    gen_feed f = {job_next, job_done, j, n_todo};
    gen_stream(e, tok, &go, &f);
    kvstore_close(e->snap);
    e->snap = NULL;
    engine_finish(e);
    job_flush(j);
    int rc = j->out_failed || j->in.failed || j->head != j->tail;
    if (j->out_fd != 1 && fsync(j->out_fd) != 0 && errno != EINVAL) {
        fprintf(stderr, "glmtp: generate: %s: fsync failed: %s\n", o->output, strerror(errno));
        rc = 1;
    }
    char kept[64] = "";
    if (o->resume) snprintf(kept, sizeof kept, " after the %d lines already done", n_kept);
    log_msg(LOG_INFO, "generate: %d records written to %s%s, at most %d input lines in memory at once (--window %d)",
            j->n_written, strcmp(o->output, "-") ? o->output : "stdout", kept, j->peak, j->window);
    if (j->n_err) fprintf(stderr, "glmtp: generate: %d of %d requests failed\n", j->n_err, j->n_written);
    return rc || j->n_err ? 1 : 0;
}

int cmd_generate(comm *c, int argc, char **argv) {
    if (engine_check_args(c, argc, argv)) return 1;
    gen_cli o;
    if (parse_cli(c, &o, argc, argv)) return 1;

    /* Rank 0 prepares everything that can fail before the ranks load weights. */
    tokenizer *tok = NULL;
    char *preamble = NULL;
    glm_config cfg;
    req_context ctx = {0};
    keyset done = {0};
    unsigned char *skip = NULL;
    gen_job j = {.out_fd = -1};
    int failed = 0, kv_tokens = 0, n_todo = 0, n_kept = 0;
    if (c->rank == 0) {
        failed = prepare(&o, c, &cfg, &tok, &preamble, &ctx, &done, &skip, &n_todo, &n_kept, &j);
        keyset_free(&done); /* the first pass marked the lines to skip */
        if (!failed) kv_tokens = kv_pool_tokens(&o, &cfg, c, &j);
    }
    int rc = 1;
    engine e = {0};
    if (comm_first_failed(c, failed) >= 0) goto done;
    c->iface->bcast(c->ctx, &kv_tokens, sizeof kv_tokens);
    if (engine_open(&e, c, o.dir, kv_tokens, o.block_size, o.threads, o.device, o.comm_kind, o.mem_util,
                    o.kv_dtype))
        goto done;
    /* A pool sized from the window holds it; one given by --kv-tokens is
     * checked against the maximum model length (the same on every rank). */
    if (o.kv_tokens && engine_max_model_len(&e, o.max_model_len, "generate") < 0) goto done;
    if (c->rank != 0) {
        engine_follow(&e);
        rc = 0;
        goto done;
    }
    rc = run_job(&o, &e, tok, &j, n_todo, n_kept);
done:
    if (j.out_fd > 1 && close(j.out_fd) != 0) {
        fprintf(stderr, "glmtp: generate: %s: close failed: %s\n", o.output, strerror(errno));
        rc = 1;
    }
    job_free(&j);
    free(skip);
    free(preamble);
    tok_free(tok);
    engine_close(&e);
    return rc;
}
