/*
 * The HTTP fields and the problem+json body of ratekeeper's uWSGI plugin,
 * byte for byte what the Flask extension sends (README "Over-limit
 * responses", bindings/python/ratekeeper/flask.py). No uWSGI in here: the
 * formatting is plain C over a growable string, so that tests/uwsgi can
 * check it on its own under AddressSanitizer.
 */
#ifndef RK_FIELDS_H
#define RK_FIELDS_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

/* A growable byte string. Every append either succeeds or sets `failed`
 * (out of memory, or past RKF_MAX_BYTES) and leaves the bytes as they were;
 * later appends then do nothing, so callers check `failed` once at the end. */
struct rkf_str {
    char *buf;
    size_t len;
    size_t cap;
    bool failed;
};

/* No field or body the plugin builds is ever larger than this. */
#define RKF_MAX_BYTES (1u << 20)

void rkf_init(struct rkf_str *s);
void rkf_free(struct rkf_str *s);
void rkf_append(struct rkf_str *s, const char *bytes, size_t len);
void rkf_append_cstr(struct rkf_str *s, const char *cstr);
void rkf_append_u64(struct rkf_str *s, uint64_t v);

/* Whole seconds, rounded up (Python's -(-ns // 10**9)). */
uint64_t rkf_ceil_s(uint64_t ns);

/* `name` (UTF-8) as a structured-field String (RFC 8941): quoted, each
 * character outside printable ASCII replaced by one '_', quotes and
 * backslashes escaped (flask.py `_sf_string`). */
void rkf_append_sf_string(struct rkf_str *s, const char *name, size_t len);

/* `text` (UTF-8) as a JSON string the way Python's json.dumps writes it
 * (ensure_ascii: every non-ASCII character as \uXXXX, surrogate pairs
 * above U+FFFF; an invalid byte becomes U+FFFD). */
void rkf_append_json_string(struct rkf_str *s, const char *text, size_t len);

/* The name of limit `index` of an item named `base` with `nlimits` limits:
 * `base`, or `base-<index>` when the spec has several limits. */
void rkf_append_item_name(struct rkf_str *s, const char *base, size_t base_len, uint32_t nlimits, uint32_t index);

/* One item of `RateLimit-Policy`: `"<name>";q=<quota>;w=<window s>`. */
void rkf_append_policy_item(struct rkf_str *s, const char *item_name, size_t item_name_len, uint64_t quota,
                            uint64_t period_ns);

/* The value of `RateLimit`: `<sf name>;r=<remaining>;t=<reset s>`. */
void rkf_append_ratelimit(struct rkf_str *s, const char *sf_name, size_t sf_name_len, uint64_t remaining,
                          uint64_t reset_after_ns);

/* The problem+json body of a 429: type, title, status, detail, policy,
 * retry_after (and banned), in flask.py's order and spacing. `retry_after_ns`
 * UINT64_MAX means never ("retry_after": null and the "costs more" detail). */
void rkf_append_problem_429(struct rkf_str *s, const char *problem_type, const char *item_name, size_t item_name_len,
                            uint64_t limit, uint64_t period_ns, uint64_t retry_after_ns, bool banned);

/* The problem+json body of a 503 (the limiter failed and fails closed). */
void rkf_append_problem_503(struct rkf_str *s, const char *problem_type);

/* `Retry-After` in whole seconds (at least 1), or 0 when there is none
 * (retry_after_ns UINT64_MAX: the request can never be allowed). */
uint64_t rkf_retry_after_s(uint64_t retry_after_ns);

#endif
