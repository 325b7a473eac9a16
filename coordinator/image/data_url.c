/* data_url.c: "data:image/png;base64,...." -> bytes (image.h states the
 * accepted form). Strict base64: standard alphabet, '=' padding to a multiple
 * of 4, ASCII whitespace skipped, anything else refused with its offset. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h> // defines: strncasecmp

#include "image.h"

static void set_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static int b64_value(unsigned char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

static int is_ws(unsigned char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

static void bad_char(unsigned char c, size_t at, char *err, size_t errlen) {
    if (c == '-' || c == '_')
        set_err(err, errlen, "data URL: '%c' at payload offset %zu: URL-safe base64 is not taken", c, at);
    else if (c == '=')
        set_err(err, errlen, "data URL: misplaced '=' padding at payload offset %zu", at);
    else if (c >= 0x21 && c < 0x7f)
        set_err(err, errlen, "data URL: invalid base64 character '%c' at payload offset %zu", c, at);
    else
        set_err(err, errlen, "data URL: invalid base64 byte 0x%02x at payload offset %zu", c, at);
}

int image_from_data_url(const char *url, uint8_t **bytes, size_t *n, char *err, size_t errlen) {
    static const char *types[] = {"image/png", "image/jpeg", "image/webp"};
    *bytes = NULL;
    *n = 0;
    if (!url || strncasecmp(url, "data:", 5) != 0) {
        set_err(err, errlen, "image URL: only data URLs (data:image/...;base64,...) are taken");
        return -1;
    }
    const char *mt = url + 5;
    size_t mtlen = strcspn(mt, ";,");
    int known = 0;
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (mtlen == strlen(types[i]) && !strncasecmp(mt, types[i], mtlen)) known = 1;
    if (!known) {
        set_err(err, errlen, "data URL: media type '%.*s' is not image/png, image/jpeg or image/webp",
                (int)(mtlen > 64 ? 64 : mtlen), mt);
        return -1;
    }
    const char *p = mt + mtlen;
    if (strncasecmp(p, ";base64,", 8) != 0) {
        set_err(err, errlen, "data URL: expected ';base64,' after the media type (only base64 payloads are taken)");
        return -1;
    }
    const char *b64 = p + 8;
    size_t len = strlen(b64), nsig = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)b64[i];
        if (is_ws(c)) continue;
        if (c != '=' && b64_value(c) < 0) {
            bad_char(c, i, err, errlen);
            return -1;
        }
        nsig++;
    }
    if (nsig == 0) {
        set_err(err, errlen, "data URL: empty base64 payload");
        return -1;
    }
    if (nsig % 4) {
        set_err(err, errlen, "data URL: base64 payload length %zu is not a multiple of 4 (padding missing?)", nsig);
        return -1;
    }
    size_t cap = nsig / 4 * 3;
    if (cap - 2 > IMAGE_MAX_BYTES_DEFAULT) { // up to 2 bytes of padding
        set_err(err, errlen, "data URL: payload too large (about %zu bytes, limit %zu)", cap,
                (size_t)IMAGE_MAX_BYTES_DEFAULT);
        return -1;
    }
    uint8_t *out = malloc(cap);
    if (!out) {
        set_err(err, errlen, "data URL: out of memory for %zu bytes", cap);
        return -1;
    }
    size_t o = 0, seen = 0;
    int quad[4], q = 0, pad = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)b64[i];
        if (is_ws(c)) continue;
        seen++;
        int v;
        if (c == '=') {
            // '=' only in the last quad's last one or two places
            if (seen <= nsig - 2 || q < 2) goto bad_char;
            pad++;
            v = 0;
        } else {
            if (pad) goto bad_char; // data after '='
            v = b64_value(c);
            if (v < 0) goto bad_char;
        }
        quad[q++] = v;
        if (q == 4) {
            uint32_t t = (uint32_t)quad[0] << 18 | (uint32_t)quad[1] << 12 | (uint32_t)quad[2] << 6 | (uint32_t)quad[3];
            out[o++] = (uint8_t)(t >> 16);
            if (pad < 2) out[o++] = (uint8_t)(t >> 8);
            if (pad < 1) out[o++] = (uint8_t)t;
            q = 0;
        }
        continue;
    bad_char:
        bad_char(c, i, err, errlen);
        free(out);
        return -1;
    }
    *bytes = out;
    *n = o;
    return 0;
}
