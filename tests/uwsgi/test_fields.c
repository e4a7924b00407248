/* Unit test of bindings/uwsgi/rk_fields.c: the RateLimit fields and the
 * problem+json bodies of the uWSGI plugin, compared with what the Flask
 * extension writes (Python's json.dumps and flask.py's _sf_string), on
 * awkward names too. Run by tests/uwsgi/run.sh under ASan+UBSan. Prints
 * "N passed, M failed" last. */
#include "rk_fields.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int passed, failed;

static void expect(const char *what, struct rkf_str *s, const char *want) {
    if (!s->failed && s->len == strlen(want) && memcmp(s->buf, want, s->len) == 0) {
        passed++;
    } else {
        failed++;
        printf("FAIL %s\n  got:  %.*s%s\n  want: %s\n", what, (int)s->len, s->buf ? s->buf : "",
               s->failed ? " (failed)" : "", want);
    }
    rkf_free(s);
}

int main(void) {
    struct rkf_str s;

    rkf_init(&s);
    rkf_append_policy_item(&s, "plan", 4, 4, 60000000000ull);
    expect("policy item", &s, "\"plan\";q=4;w=60");

    rkf_init(&s);
    rkf_append_policy_item(&s, "burst", 5, 20, 1);
    expect("a window under a second is 1 s", &s, "\"burst\";q=20;w=1");

    rkf_init(&s);
    static const char name[] = "a\"b\\c d\x01\xc3\xa9\xf0\x9f\x98\x80~";
    rkf_append_sf_string(&s, name, sizeof(name) - 1);
    expect("sf-string: quotes and backslashes escaped, one _ per character outside printable ASCII", &s,
           "\"a\\\"b\\\\c d___~\"");

    rkf_init(&s);
    static const char awkward[] = "q\"\\\n\r\t\b\f\x01\x7f\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\xff/";
    rkf_append_json_string(&s, awkward, sizeof(awkward) - 1);
    expect("json: as json.dumps with ensure_ascii", &s,
           "\"q\\\"\\\\\\n\\r\\t\\b\\f\\u0001\\u007f\\u00e9\\u20ac\\ud83d\\ude00\\ufffd/\"");

    rkf_init(&s);
    rkf_append_ratelimit(&s, "\"plan\"", 6, 0, 14000000001ull);
    expect("RateLimit: reset rounded up", &s, "\"plan\";r=0;t=15");

    rkf_init(&s);
    rkf_append_item_name(&s, "api", 3, 2, 1);
    rkf_append(&s, " ", 1);
    rkf_append_item_name(&s, "api", 3, 1, 0);
    expect("item names: -<index> only with several limits", &s, "api-1 api");

    rkf_init(&s);
    rkf_append_problem_429(&s, "about:blank", "plan", 4, 4, 60000000000ull, 14200000000ull, false);
    expect("429 body", &s,
           "{\"type\": \"about:blank\", \"title\": \"Too Many Requests\", \"status\": 429, \"detail\": \"Rate limit plan "
           "exceeded (4 per 60 s); retry in 15 s.\", \"policy\": \"plan\", \"retry_after\": 15}");

    rkf_init(&s);
    rkf_append_problem_429(&s, "about:blank", "plan", 4, 4, 60000000000ull, 1, false);
    expect("retry-after is at least 1 s", &s,
           "{\"type\": \"about:blank\", \"title\": \"Too Many Requests\", \"status\": 429, \"detail\": \"Rate limit plan "
           "exceeded (4 per 60 s); retry in 1 s.\", \"policy\": \"plan\", \"retry_after\": 1}");

    rkf_init(&s);
    rkf_append_problem_429(&s, "https://example.com/p", "big", 3, 4, 60000000000ull, UINT64_MAX, false);
    expect("a cost that can never pass", &s,
           "{\"type\": \"https://example.com/p\", \"title\": \"Too Many Requests\", \"status\": 429, \"detail\": \"This "
           "request costs more than the big limit (4 per 60 s) can ever allow.\", \"policy\": \"big\", "
           "\"retry_after\": null}");

    rkf_init(&s);
    rkf_append_problem_429(&s, "about:blank", "n\"x", 3, 4, 60000000000ull, 30000000000ull, true);
    expect("banned, and a name that needs escaping", &s,
           "{\"type\": \"about:blank\", \"title\": \"Too Many Requests\", \"status\": 429, \"detail\": \"Too many "
           "requests over the n\\\"x limit: this client is banned for 30 s.\", \"policy\": \"n\\\"x\", "
           "\"retry_after\": 30, \"banned\": true}");

    rkf_init(&s);
    rkf_append_problem_503(&s, "about:blank");
    expect("503 body", &s,
           "{\"type\": \"about:blank\", \"title\": \"Service Unavailable\", \"status\": 503, \"detail\": \"The rate "
           "limiter is unavailable.\"}");

    rkf_init(&s);
    rkf_append_u64(&s, UINT64_MAX);
    rkf_append(&s, " ", 1);
    rkf_append_u64(&s, 0);
    expect("u64 digits", &s, "18446744073709551615 0");

    /* Past RKF_MAX_BYTES an append fails, keeps what was there and every
     * later append does nothing. */
    rkf_init(&s);
    size_t big = RKF_MAX_BYTES / 2 + 1;
    char *chunk = malloc(big);
    memset(chunk, 'a', big);
    rkf_append(&s, chunk, big);
    size_t len = s.len;
    rkf_append(&s, chunk, big);
    rkf_append(&s, "x", 1);
    if (s.failed && s.len == len && len == big) {
        passed++;
    } else {
        failed++;
        printf("FAIL the size bound (failed %d, len %zu)\n", s.failed, s.len);
    }
    rkf_free(&s);
    free(chunk);

    /* A truncated UTF-8 sequence at the very end is read no further. */
    rkf_init(&s);
    char tail[2] = {'a', '\xe2'};
    rkf_append_json_string(&s, tail, 2);
    expect("a truncated sequence is one U+FFFD", &s, "\"a\\ufffd\"");

    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
