/* See rk_fields.h. */
#include "rk_fields.h"

#include <stdlib.h>
#include <string.h>

void rkf_init(struct rkf_str *s) {
    s->buf = NULL;
    s->len = 0;
    s->cap = 0;
    s->failed = false;
}

void rkf_free(struct rkf_str *s) {
    free(s->buf);
    rkf_init(s);
}

void rkf_append(struct rkf_str *s, const char *bytes, size_t len) {
    if (s->failed || len == 0) return;
    if (len > RKF_MAX_BYTES - s->len) { /* s->len <= RKF_MAX_BYTES always */
        s->failed = true;
        return;
    }
    size_t need = s->len + len + 1; /* keep room for a NUL */
    if (need > s->cap) {
        size_t cap = s->cap ? s->cap : 256;
        while (cap < need) cap *= 2;
        char *grown = realloc(s->buf, cap);
        if (!grown) {
            s->failed = true;
            return;
        }
        s->buf = grown;
        s->cap = cap;
    }
    memcpy(s->buf + s->len, bytes, len);
    s->len += len;
    s->buf[s->len] = '\0';
}

void rkf_append_cstr(struct rkf_str *s, const char *cstr) { rkf_append(s, cstr, strlen(cstr)); }

void rkf_append_u64(struct rkf_str *s, uint64_t v) {
    char digits[20];
    size_t n = 0;
    do {
        digits[sizeof(digits) - 1 - n] = (char)('0' + v % 10);
        v /= 10;
        n++;
    } while (v);
    rkf_append(s, digits + sizeof(digits) - n, n);
}

uint64_t rkf_ceil_s(uint64_t ns) { return ns / 1000000000u + (ns % 1000000000u != 0); }

uint64_t rkf_retry_after_s(uint64_t retry_after_ns) {
    if (retry_after_ns == UINT64_MAX) return 0;
    uint64_t s = rkf_ceil_s(retry_after_ns);
    return s ? s : 1;
}

/* Decodes one UTF-8 character of text[*i..len): returns the code point and
 * advances *i; an invalid or truncated sequence is one byte, U+FFFD (as
 * Python's "replace" error handler does per bad byte). */
static uint32_t next_code_point(const unsigned char *text, size_t len, size_t *i) {
    unsigned char c = text[*i];
    uint32_t cp;
    size_t extra;
    if (c < 0x80) {
        (*i)++;
        return c;
    } else if (c >= 0xC2 && c <= 0xDF) {
        cp = c & 0x1F;
        extra = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
        cp = c & 0x0F;
        extra = 2;
    } else if (c >= 0xF0 && c <= 0xF4) {
        cp = c & 0x07;
        extra = 3;
    } else {
        (*i)++;
        return 0xFFFD;
    }
    if (extra > len - *i - 1) {
        (*i)++;
        return 0xFFFD;
    }
    for (size_t k = 1; k <= extra; k++) {
        unsigned char cc = text[*i + k];
        if ((cc & 0xC0) != 0x80) {
            (*i)++;
            return 0xFFFD;
        }
        cp = (cp << 6) | (cc & 0x3F);
    }
    /* Overlong forms, surrogates and values past U+10FFFF are invalid. */
    if ((extra == 2 && cp < 0x800) || (extra == 3 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF)) {
        (*i)++;
        return 0xFFFD;
    }
    *i += extra + 1;
    return cp;
}

void rkf_append_sf_string(struct rkf_str *s, const char *name, size_t len) {
    const unsigned char *t = (const unsigned char *)name;
    rkf_append(s, "\"", 1);
    size_t i = 0;
    while (i < len) {
        uint32_t cp = next_code_point(t, len, &i);
        if (cp < 0x20 || cp > 0x7E) {
            rkf_append(s, "_", 1);
        } else if (cp == '"' || cp == '\\') {
            char esc[2] = {'\\', (char)cp};
            rkf_append(s, esc, 2);
        } else {
            char ch = (char)cp;
            rkf_append(s, &ch, 1);
        }
    }
    rkf_append(s, "\"", 1);
}

static void append_u_escape(struct rkf_str *s, uint32_t unit) {
    static const char hex[] = "0123456789abcdef";
    char esc[6] = {'\\', 'u', hex[(unit >> 12) & 0xF], hex[(unit >> 8) & 0xF], hex[(unit >> 4) & 0xF], hex[unit & 0xF]};
    rkf_append(s, esc, sizeof(esc));
}

void rkf_append_json_string(struct rkf_str *s, const char *text, size_t len) {
    const unsigned char *t = (const unsigned char *)text;
    rkf_append(s, "\"", 1);
    size_t i = 0;
    while (i < len) {
        uint32_t cp = next_code_point(t, len, &i);
        switch (cp) {
        case '"': rkf_append(s, "\\\"", 2); break;
        case '\\': rkf_append(s, "\\\\", 2); break;
        case '\n': rkf_append(s, "\\n", 2); break;
        case '\r': rkf_append(s, "\\r", 2); break;
        case '\t': rkf_append(s, "\\t", 2); break;
        case '\b': rkf_append(s, "\\b", 2); break;
        case '\f': rkf_append(s, "\\f", 2); break;
        default:
            if (cp < 0x20 || (cp >= 0x7F && cp <= 0xFFFF)) {
                append_u_escape(s, cp);
            } else if (cp > 0xFFFF) {
                uint32_t v = cp - 0x10000;
                append_u_escape(s, 0xD800 | (v >> 10));
                append_u_escape(s, 0xDC00 | (v & 0x3FF));
            } else {
                char ch = (char)cp;
                rkf_append(s, &ch, 1);
            }
        }
    }
    rkf_append(s, "\"", 1);
}

void rkf_append_item_name(struct rkf_str *s, const char *base, size_t base_len, uint32_t nlimits, uint32_t index) {
    rkf_append(s, base, base_len);
    if (nlimits > 1) {
        rkf_append(s, "-", 1);
        rkf_append_u64(s, index);
    }
}

static uint64_t window_s(uint64_t period_ns) {
    uint64_t w = rkf_ceil_s(period_ns);
    return w ? w : 1;
}

void rkf_append_policy_item(struct rkf_str *s, const char *item_name, size_t item_name_len, uint64_t quota,
                            uint64_t period_ns) {
    rkf_append_sf_string(s, item_name, item_name_len);
    rkf_append_cstr(s, ";q=");
    rkf_append_u64(s, quota);
    rkf_append_cstr(s, ";w=");
    rkf_append_u64(s, window_s(period_ns));
}

void rkf_append_ratelimit(struct rkf_str *s, const char *sf_name, size_t sf_name_len, uint64_t remaining,
                          uint64_t reset_after_ns) {
    rkf_append(s, sf_name, sf_name_len);
    rkf_append_cstr(s, ";r=");
    rkf_append_u64(s, remaining);
    rkf_append_cstr(s, ";t=");
    rkf_append_u64(s, rkf_ceil_s(reset_after_ns));
}

static void append_problem_head(struct rkf_str *s, const char *problem_type, const char *title, const char *status) {
    rkf_append_cstr(s, "{\"type\": ");
    rkf_append_json_string(s, problem_type, strlen(problem_type));
    rkf_append_cstr(s, ", \"title\": \"");
    rkf_append_cstr(s, title);
    rkf_append_cstr(s, "\", \"status\": ");
    rkf_append_cstr(s, status);
}

void rkf_append_problem_429(struct rkf_str *s, const char *problem_type, const char *item_name, size_t item_name_len,
                            uint64_t limit, uint64_t period_ns, uint64_t retry_after_ns, bool banned) {
    uint64_t retry_after = rkf_retry_after_s(retry_after_ns);
    struct rkf_str detail;
    rkf_init(&detail);
    if (banned) {
        rkf_append_cstr(&detail, "Too many requests over the ");
        rkf_append(&detail, item_name, item_name_len);
        rkf_append_cstr(&detail, " limit: this client is banned for ");
        rkf_append_u64(&detail, retry_after);
        rkf_append_cstr(&detail, " s.");
    } else if (retry_after == 0) {
        rkf_append_cstr(&detail, "This request costs more than the ");
        rkf_append(&detail, item_name, item_name_len);
        rkf_append_cstr(&detail, " limit (");
        rkf_append_u64(&detail, limit);
        rkf_append_cstr(&detail, " per ");
        rkf_append_u64(&detail, window_s(period_ns));
        rkf_append_cstr(&detail, " s) can ever allow.");
    } else {
        rkf_append_cstr(&detail, "Rate limit ");
        rkf_append(&detail, item_name, item_name_len);
        rkf_append_cstr(&detail, " exceeded (");
        rkf_append_u64(&detail, limit);
        rkf_append_cstr(&detail, " per ");
        rkf_append_u64(&detail, window_s(period_ns));
        rkf_append_cstr(&detail, " s); retry in ");
        rkf_append_u64(&detail, retry_after);
        rkf_append_cstr(&detail, " s.");
    }
    if (detail.failed) {
        s->failed = true;
        rkf_free(&detail);
        return;
    }

    append_problem_head(s, problem_type, "Too Many Requests", "429");
    rkf_append_cstr(s, ", \"detail\": ");
    rkf_append_json_string(s, detail.buf, detail.len);
    rkf_append_cstr(s, ", \"policy\": ");
    rkf_append_json_string(s, item_name, item_name_len);
    rkf_append_cstr(s, ", \"retry_after\": ");
    if (retry_after == 0) {
        rkf_append_cstr(s, "null");
    } else {
        rkf_append_u64(s, retry_after);
    }
    if (banned) rkf_append_cstr(s, ", \"banned\": true");
    rkf_append_cstr(s, "}");
    rkf_free(&detail);
}

void rkf_append_problem_503(struct rkf_str *s, const char *problem_type) {
    append_problem_head(s, problem_type, "Service Unavailable", "503");
    rkf_append_cstr(s, ", \"detail\": \"The rate limiter is unavailable.\"}");
}
