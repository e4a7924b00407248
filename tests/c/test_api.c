/* Every function of the C API and every error status it can return, from C.
 * Deterministic: every time-dependent call takes an explicit now_ns. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"

#define S 1000000000ull
#define KEY(s) (const uint8_t *)(s), strlen(s)

/* The layout of the public structs is ABI: pin it. */
_Static_assert(sizeof(rk_decision) == 48, "rk_decision layout");
_Static_assert(sizeof(rk_engine_options) == 40, "rk_engine_options layout");
_Static_assert(sizeof(rk_permit) == 48, "rk_permit layout");
_Static_assert(sizeof(rk_limit) == 32, "rk_limit layout");

/* rk_decision gained `banned` and `shadow_denied` in the padding after
 * `allowed`: its size and every older field's offset are unchanged. */
_Static_assert(offsetof(rk_decision, allowed) == 0, "rk_decision.allowed");
_Static_assert(offsetof(rk_decision, banned) == 1, "rk_decision.banned");
_Static_assert(offsetof(rk_decision, shadow_denied) == 2, "rk_decision.shadow_denied");
_Static_assert(offsetof(rk_decision, limit) == 8, "rk_decision.limit");
_Static_assert(offsetof(rk_decision, remaining) == 16, "rk_decision.remaining");
_Static_assert(offsetof(rk_decision, retry_after_ns) == 24, "rk_decision.retry_after_ns");
_Static_assert(offsetof(rk_decision, reset_after_ns) == 32, "rk_decision.reset_after_ns");
_Static_assert(offsetof(rk_decision, limit_index) == 40, "rk_decision.limit_index");

/* rk_policy_options: the first version (24 bytes, through when_full) is a
 * prefix of the current one; new fields start past it. */
#define POLICY_OPTIONS_V1_SIZE 24
_Static_assert(sizeof(rk_policy_options) == 64, "rk_policy_options layout");
_Static_assert(offsetof(rk_policy_options, capacity) == 8, "rk_policy_options.capacity");
_Static_assert(offsetof(rk_policy_options, when_full) == 16, "rk_policy_options.when_full");
_Static_assert(offsetof(rk_policy_options, retry_jitter_ns) == POLICY_OPTIONS_V1_SIZE,
               "new fields start after the first version");
_Static_assert(offsetof(rk_policy_options, penalty_strikes) == 56, "rk_policy_options.penalty_strikes");
_Static_assert(offsetof(rk_policy_options, shadow) == 60, "rk_policy_options.shadow");
_Static_assert(offsetof(rk_policy_options, record_keys) == 61, "rk_policy_options.record_keys");

/* rk_stats: the first version (48 bytes, through capacity) is a prefix. */
_Static_assert(sizeof(rk_stats) == 72, "rk_stats layout");
_Static_assert(offsetof(rk_stats, capacity) == 40, "rk_stats.capacity");
_Static_assert(offsetof(rk_stats, shadow_denied) == RK_STATS_V1_SIZE, "rk_stats.shadow_denied");
_Static_assert(offsetof(rk_stats, bans) == 64, "rk_stats.bans");

_Static_assert(sizeof(rk_check_item) == 32, "rk_check_item layout");
_Static_assert(offsetof(rk_check_item, key) == 8 && offsetof(rk_check_item, key_len) == 16 &&
                   offsetof(rk_check_item, cost) == 24,
               "rk_check_item layout");
_Static_assert(sizeof(rk_deny_event) == 120, "rk_deny_event layout");
_Static_assert(offsetof(rk_deny_event, key) == 40 && RK_EVENT_KEY_BYTES == 80, "rk_deny_event.key");
_Static_assert(sizeof(rk_status) == 4, "rk_status is a uint32_t");
_Static_assert(RK_OK == 0, "RK_OK is 0");

static rk_engine *new_engine(uint64_t capacity) {
    rk_engine_options opts;
    rk_engine *engine = NULL;
    rk_engine_options_init(&opts);
    opts.capacity = capacity;
    CHECK_OK(rk_engine_new(&opts, &engine));
    return engine;
}

static void test_status_strings_and_version(void) {
    static const char *const names[] = {
        "RK_OK", "RK_ERR_NULL_POINTER", "RK_ERR_NULL_KEY", "RK_ERR_INVALID_UTF8",
        "RK_ERR_PARSE", "RK_ERR_UNSUPPORTED_POLICY", "RK_ERR_POLICY_MISMATCH",
        "RK_ERR_UNKNOWN_POLICY", "RK_ERR_TOO_MANY_POLICIES", "RK_ERR_WRONG_POLICY_KIND",
        "RK_ERR_INVALID_PERMIT", "RK_ERR_TIMEOUT", "RK_ERR_OUT_OF_MEMORY", "RK_ERR_IO",
        "RK_ERR_CORRUPT", "RK_ERR_UNSUPPORTED_PLATFORM", "RK_ERR_INVALID_ARGUMENT",
        "RK_ERR_PANIC", "RK_ERR_BUFFER_TOO_SMALL", "RK_ERR_BACKEND", "RK_ERR_WRONG_ENGINE_KIND",
        "RK_ERR_UNSAFE_FILE",
    };
    const rk_status values[] = {
        RK_OK, RK_ERR_NULL_POINTER, RK_ERR_NULL_KEY, RK_ERR_INVALID_UTF8, RK_ERR_PARSE,
        RK_ERR_UNSUPPORTED_POLICY, RK_ERR_POLICY_MISMATCH, RK_ERR_UNKNOWN_POLICY,
        RK_ERR_TOO_MANY_POLICIES, RK_ERR_WRONG_POLICY_KIND, RK_ERR_INVALID_PERMIT,
        RK_ERR_TIMEOUT, RK_ERR_OUT_OF_MEMORY, RK_ERR_IO, RK_ERR_CORRUPT,
        RK_ERR_UNSUPPORTED_PLATFORM, RK_ERR_INVALID_ARGUMENT, RK_ERR_PANIC,
        RK_ERR_BUFFER_TOO_SMALL, RK_ERR_BACKEND, RK_ERR_WRONG_ENGINE_KIND,
        RK_ERR_UNSAFE_FILE,
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        const char *s = rk_status_str((uint32_t)i);
        CHECK(values[i] == (rk_status)i); /* values are explicit and never renumbered */
        CHECK(s != NULL && strncmp(s, names[i], strlen(names[i])) == 0 && s[strlen(names[i])] == ':');
    }
    CHECK(strcmp(rk_status_str(22), "unknown rk_status value") == 0);
    CHECK(strcmp(rk_status_str(UINT32_MAX), "unknown rk_status value") == 0);

    CHECK(strcmp(rk_last_error(), "") == 0); /* no failure on this thread yet */
    CHECK(rk_version() != NULL && rk_version()[0] >= '0' && rk_version()[0] <= '9');
    uint64_t t0 = rk_now_ns(), t1 = rk_now_ns();
    CHECK(t0 > 0 && t1 >= t0);
}

static void test_engine_options(void) {
    rk_engine_options opts;
    rk_engine *engine = NULL;
    memset(&opts, 0xff, sizeof opts);
    rk_engine_options_init(&opts);
    CHECK(opts.struct_size == sizeof opts);
    CHECK(opts.capacity == 65536);
    CHECK(opts.clock == RK_CLOCK_MONOTONIC_COARSE);
    CHECK(opts.shared_max_bytes == (1ull << 30));
    CHECK(opts.shared_file_mode == 0600);
    rk_engine_options_init(NULL); /* no-op */

    /* NULL options are the defaults. */
    CHECK_OK(rk_engine_new(NULL, &engine));
    CHECK(engine != NULL);
    rk_engine_free(engine);
    rk_engine_free(NULL); /* no-op */

    CHECK_STATUS(rk_engine_new(NULL, NULL), RK_ERR_NULL_POINTER);
    CHECK_ERROR_MENTIONS("rk_engine_new: `out` is NULL");

    engine = (rk_engine *)&opts; /* a sentinel: must stay untouched on failure */
    opts.struct_size = 0;
    CHECK_STATUS(rk_engine_new(&opts, &engine), RK_ERR_INVALID_ARGUMENT);
    CHECK_ERROR_MENTIONS("struct_size is 0");
    opts.struct_size = 8; /* ends before `capacity` */
    CHECK_STATUS(rk_engine_new(&opts, &engine), RK_ERR_INVALID_ARGUMENT);
    CHECK(engine == (rk_engine *)&opts);

    /* An old caller that knows only struct_size and capacity: the garbage
     * beyond its struct is never read. */
    rk_engine_options_init(&opts);
    opts.struct_size = 16;
    opts.capacity = 10;
    opts.clock = 12345;
    CHECK_OK(rk_engine_new(&opts, &engine));
    rk_engine_free(engine);

    rk_engine_options_init(&opts);
    opts.clock = 12345;
    CHECK_STATUS(rk_engine_new(&opts, &engine), RK_ERR_INVALID_ARGUMENT);
    CHECK_ERROR_MENTIONS("clock is 12345");
    opts.clock = RK_CLOCK_MONOTONIC_COARSE;
    opts.capacity = 0;
    CHECK_STATUS(rk_engine_new(&opts, &engine), RK_ERR_INVALID_ARGUMENT);
    CHECK_ERROR_MENTIONS("capacity");
    opts.capacity = 100;
    CHECK_OK(rk_engine_new(&opts, &engine));
    rk_engine_free(engine);
}

static void test_open_shared(void) {
    rk_engine *engine = NULL;
    char path[] = "/tmp/rk-test-XXXXXX";
    CHECK_STATUS(rk_engine_open_shared(NULL, NULL, &engine), RK_ERR_NULL_POINTER);
    CHECK_ERROR_MENTIONS("`path` is NULL");
    CHECK_STATUS(rk_engine_open_shared("/nonexistent-dir-rk/x", NULL, &engine), RK_ERR_IO);
    CHECK(engine == NULL);

    /* A file that is not a ratekeeper file. */
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    if (fd >= 0) {
        static const char junk[] = "this is not a ratekeeper file, not at all, no......";
        CHECK(write(fd, junk, sizeof junk) == (ssize_t)sizeof junk);
        close(fd);
        CHECK_STATUS(rk_engine_open_shared(path, NULL, &engine), RK_ERR_CORRUPT);
        CHECK(engine == NULL);
        CHECK_STATUS(rk_engine_open_shared(path, NULL, NULL), RK_ERR_NULL_POINTER);
        unlink(path);
        /* A fresh file: a working engine. */
        CHECK_OK(rk_engine_open_shared(path, NULL, &engine));
        if (engine != NULL) {
            uint32_t p;
            rk_decision d;
            CHECK_OK(rk_policy_add(engine, "shared", "2/second", &p));
            CHECK_OK(rk_check_at(engine, p, KEY("k"), 1, 5 * S, &d));
            CHECK(d.allowed && d.remaining == 1);
            rk_engine_free(engine);
            engine = NULL;
        }
        /* Writable by others: refused as unsafe, with the mode in the message. */
        CHECK(chmod(path, 0666) == 0);
        CHECK_STATUS(rk_engine_open_shared(path, NULL, &engine), RK_ERR_UNSAFE_FILE);
        CHECK_ERROR_MENTIONS("is mode 0666, wider than the configured 0600");
        CHECK(engine == NULL);
        unlink(path);
    }
}

static void test_policies(void) {
    rk_engine *engine = new_engine(1024);
    uint32_t login = 999, again = 999, p = 999, count = 0;

    CHECK_OK(rk_policy_add(engine, "login", "5/minute;20/hour", &login));
    CHECK(login == 0);
    CHECK_OK(rk_policy_add(engine, "login", "5 per minute, 20/hour", &again));
    CHECK(again == login); /* same limits, other spelling: same policy */

    CHECK_STATUS(rk_policy_add(NULL, "x", "1/second", &p), RK_ERR_NULL_POINTER);
    CHECK_ERROR_MENTIONS("rk_policy_add: `engine` is NULL");
    CHECK_STATUS(rk_policy_add(engine, NULL, "1/second", &p), RK_ERR_NULL_POINTER);
    CHECK_ERROR_MENTIONS("`name` is NULL");
    CHECK_STATUS(rk_policy_add(engine, "x", NULL, &p), RK_ERR_NULL_POINTER);
    CHECK_ERROR_MENTIONS("`spec` is NULL");
    CHECK_STATUS(rk_policy_add(engine, "x", "1/second", NULL), RK_ERR_NULL_POINTER);
    CHECK_ERROR_MENTIONS("`policy_out` is NULL");
    CHECK_STATUS(rk_policy_add(engine, "bad\xff", "1/second", &p), RK_ERR_INVALID_UTF8);
    CHECK_ERROR_MENTIONS("`name` is not valid UTF-8");
    CHECK_STATUS(rk_policy_add(engine, "x", "1/sec\xc3\x28", &p), RK_ERR_INVALID_UTF8);
    CHECK_ERROR_MENTIONS("`spec` is not valid UTF-8");
    CHECK_STATUS(rk_policy_add(engine, "x", "10/fortnight", &p), RK_ERR_PARSE);
    CHECK_ERROR_MENTIONS("at byte 3");
    CHECK_STATUS(rk_policy_add(engine, "x", "", &p), RK_ERR_PARSE);
    CHECK_STATUS(rk_policy_add(engine, "x", "concurrency 100000", &p), RK_ERR_UNSUPPORTED_POLICY);
    CHECK_STATUS(rk_policy_add(engine, "login", "6/minute", &p), RK_ERR_POLICY_MISMATCH);
    CHECK_ERROR_MENTIONS("\"login\"");
    CHECK_STATUS(rk_policy_add(engine, "", "1/second", &p), RK_ERR_INVALID_ARGUMENT);
    CHECK(p == 999); /* untouched by every failure above */

    /* rk_policy_add_with */
    rk_policy_options popts;
    rk_stats stats;
    rk_policy_options_init(&popts);
    CHECK(popts.struct_size == sizeof popts && popts.capacity == 0 && popts.when_full == RK_WHEN_FULL_EVICT);
    rk_policy_options_init(NULL);
    CHECK_OK(rk_policy_add_with(engine, "api", "10/second", NULL, &p));
    CHECK(p == 1);
    popts.capacity = 5000;
    popts.when_full = RK_WHEN_FULL_FAIL_CLOSED;
    CHECK_OK(rk_policy_add_with(engine, "big", "sliding_window 100/minute", &popts, &p));
    CHECK(p == 2);
    CHECK_OK(rk_policy_stats(engine, p, &stats));
    CHECK(stats.capacity >= 5000);
    popts.when_full = 7;
    CHECK_STATUS(rk_policy_add_with(engine, "w", "1/second", &popts, &p), RK_ERR_INVALID_ARGUMENT);
    CHECK_ERROR_MENTIONS("when_full is 7");
    popts.when_full = RK_WHEN_FULL_FAIL_OPEN;
    popts.struct_size = 0;
    CHECK_STATUS(rk_policy_add_with(engine, "w", "1/second", &popts, &p), RK_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(rk_policy_add_with(engine, "w", "1/second", &popts, NULL), RK_ERR_NULL_POINTER);
    CHECK_OK(rk_policy_add(engine, "jobs", "concurrency 2", &p));
    CHECK(p == 3);

    /* find, count */
    CHECK_OK(rk_policy_find(engine, "big", &p));
    CHECK(p == 2);
    CHECK_STATUS(rk_policy_find(engine, "nope", &p), RK_ERR_UNKNOWN_POLICY);
    CHECK_ERROR_MENTIONS("no policy is named \"nope\"");
    CHECK_STATUS(rk_policy_find(engine, NULL, &p), RK_ERR_NULL_POINTER);
    CHECK_STATUS(rk_policy_find(engine, "big", NULL), RK_ERR_NULL_POINTER);
    CHECK_STATUS(rk_policy_find(engine, "\xc0", &p), RK_ERR_INVALID_UTF8);
    CHECK_STATUS(rk_policy_find(NULL, "big", &p), RK_ERR_NULL_POINTER);
    CHECK_OK(rk_policy_count(engine, &count));
    CHECK(count == 4);
    CHECK_STATUS(rk_policy_count(engine, NULL), RK_ERR_NULL_POINTER);
    CHECK_STATUS(rk_policy_count(NULL, &count), RK_ERR_NULL_POINTER);

    /* name, spec */
    char buf[RK_MAX_POLICY_NAME_LEN + 1];
    size_t len = 0;
    CHECK_OK(rk_policy_name(engine, login, NULL, 0, &len));
    CHECK(len == 5);
    memset(buf, 'x', sizeof buf);
    CHECK_OK(rk_policy_name(engine, login, buf, sizeof buf, &len));
    CHECK(strcmp(buf, "login") == 0 && len == 5);
    CHECK_OK(rk_policy_name(engine, login, buf, 6, NULL));
    memset(buf, 'x', sizeof buf);
    CHECK_STATUS(rk_policy_name(engine, login, buf, 5, &len), RK_ERR_BUFFER_TOO_SMALL);
    CHECK_ERROR_MENTIONS("6 are needed");
    CHECK(buf[0] == 'x'); /* nothing written */
    CHECK_STATUS(rk_policy_name(engine, login, NULL, 10, &len), RK_ERR_NULL_POINTER);
    CHECK_STATUS(rk_policy_name(engine, login, NULL, 0, NULL), RK_ERR_NULL_POINTER);
    CHECK_STATUS(rk_policy_name(engine, 77, buf, sizeof buf, &len), RK_ERR_UNKNOWN_POLICY);
    CHECK_ERROR_MENTIONS("unknown policy id 77");
    CHECK_STATUS(rk_policy_name(NULL, login, buf, sizeof buf, &len), RK_ERR_NULL_POINTER);
    char spec[64];
    CHECK_OK(rk_policy_spec(engine, login, spec, sizeof spec, &len));
    CHECK(strcmp(spec, "5/minute; 20/hour") == 0 && len == strlen(spec));
    CHECK_STATUS(rk_policy_spec(engine, login, spec, 3, &len), RK_ERR_BUFFER_TOO_SMALL);
    CHECK_STATUS(rk_policy_spec(engine, 77, spec, sizeof spec, &len), RK_ERR_UNKNOWN_POLICY);

    /* limits */
    rk_limit limit;
    CHECK_OK(rk_policy_limit_count(engine, login, &count));
    CHECK(count == 2);
    CHECK_OK(rk_policy_limit(engine, login, 1, &limit));
    CHECK(limit.algorithm == RK_ALGORITHM_GCRA && limit.count == 20 && limit.burst == 20);
    CHECK(limit.period_ns == 3600 * S);
    CHECK_OK(rk_policy_limit(engine, 2, 0, &limit));
    CHECK(limit.algorithm == RK_ALGORITHM_SLIDING_WINDOW && limit.count == 100);
    CHECK_OK(rk_policy_limit(engine, 3, 0, &limit));
    CHECK(limit.algorithm == RK_ALGORITHM_CONCURRENCY && limit.count == 2);
    CHECK_STATUS(rk_policy_limit(engine, login, 2, &limit), RK_ERR_INVALID_ARGUMENT);
    CHECK_ERROR_MENTIONS("limit index 2 is out of range");
    CHECK_STATUS(rk_policy_limit(engine, login, 0, NULL), RK_ERR_NULL_POINTER);
    CHECK_STATUS(rk_policy_limit_count(engine, 77, &count), RK_ERR_UNKNOWN_POLICY);
    CHECK_STATUS(rk_policy_limit_count(engine, login, NULL), RK_ERR_NULL_POINTER);

    /* stats */
    CHECK_STATUS(rk_policy_stats(engine, login, NULL), RK_ERR_NULL_POINTER);
    CHECK_STATUS(rk_policy_stats(engine, 77, &stats), RK_ERR_UNKNOWN_POLICY);
    CHECK_STATUS(rk_policy_stats(NULL, login, &stats), RK_ERR_NULL_POINTER);
    rk_engine_free(engine);

    /* Too many policies (small tables keep this cheap). */
    engine = new_engine(1);
    for (uint32_t i = 0; i < RK_MAX_POLICIES; i++) {
        char name[32];
        snprintf(name, sizeof name, "p%u", (unsigned)i);
        CHECK_OK(rk_policy_add(engine, name, "1/second", &p));
    }
    CHECK_STATUS(rk_policy_add(engine, "one-too-many", "1/second", &p), RK_ERR_TOO_MANY_POLICIES);
    CHECK_ERROR_MENTIONS("256");
    CHECK_OK(rk_policy_add(engine, "p7", "1/second", &p)); /* existing names still resolve */
    CHECK(p == 7);
    rk_engine_free(engine);

    /* A table too large to allocate. */
    engine = new_engine(1);
    popts.struct_size = sizeof popts;
    popts.when_full = RK_WHEN_FULL_EVICT;
    popts.capacity = 1ull << 55;
    CHECK_STATUS(rk_policy_add_with(engine, "huge", "1/second", &popts, &p), RK_ERR_OUT_OF_MEMORY);
    CHECK_ERROR_MENTIONS("bytes for a table");
    rk_engine_free(engine);
}

static void test_checks(void) {
    rk_engine *engine = new_engine(1024);
    rk_engine *other = new_engine(1024);
    uint32_t login, jobs;
    rk_decision d, sentinel;
    bool refunded = false;
    const uint64_t now = 1000 * S;
    CHECK_OK(rk_policy_add(engine, "login", "5/minute", &login));
    CHECK_OK(rk_policy_add(engine, "jobs", "concurrency 2", &jobs));

    for (uint64_t i = 0; i < 5; i++) {
        CHECK_OK(rk_check_at(engine, login, KEY("ip:203.0.113.7"), 1, now, &d));
        CHECK(d.allowed && d.limit == 5 && d.remaining == 4 - i && d.retry_after_ns == 0);
        CHECK(d.reset_after_ns == (i + 1) * 12 * S && d.limit_index == 0);
    }
    CHECK_OK(rk_check_at(engine, login, KEY("ip:203.0.113.7"), 1, now, &d));
    CHECK(!d.allowed && d.remaining == 0 && d.retry_after_ns == 12 * S);
    CHECK_OK(rk_check_at(engine, login, KEY("ip:203.0.113.7"), 1, now + 12 * S, &d));
    CHECK(d.allowed);

    /* peek charges nothing */
    CHECK_OK(rk_peek_at(engine, login, KEY("fresh"), 1, now, &d));
    CHECK(d.allowed && d.remaining == 4);
    CHECK_OK(rk_peek_at(engine, login, KEY("fresh"), 1, now, &d));
    CHECK(d.allowed && d.remaining == 4);
    CHECK_OK(rk_peek(engine, login, KEY("fresh"), 1, &d));
    CHECK(d.allowed && d.remaining == 4);

    /* refund gives back; reset forgets */
    CHECK_OK(rk_check_at(engine, login, KEY("r"), 3, now, &d));
    CHECK(d.remaining == 2);
    CHECK_OK(rk_refund_at(engine, login, KEY("r"), 2, now, &refunded));
    CHECK(refunded);
    CHECK_OK(rk_peek_at(engine, login, KEY("r"), 1, now, &d));
    CHECK(d.remaining == 3);
    CHECK_OK(rk_refund_at(engine, login, KEY("never-seen"), 1, now, &refunded));
    CHECK(!refunded);
    CHECK_OK(rk_refund(engine, login, KEY("r"), 1, NULL)); /* refunded_out is optional */
    CHECK_OK(rk_reset(engine, login, KEY("r")));
    CHECK_OK(rk_peek_at(engine, login, KEY("r"), 1, now, &d));
    CHECK(d.remaining == 4);
    CHECK_OK(rk_reset(engine, login, KEY("never-seen")));
    /* rk_reset_key says whether there was anything to reset */
    bool had_state = false;
    CHECK_OK(rk_check_at(engine, login, KEY("rk"), 1, now, &d));
    CHECK_OK(rk_reset_key(engine, login, KEY("rk"), &had_state));
    CHECK(had_state);
    CHECK_OK(rk_reset_key(engine, login, KEY("rk"), &had_state));
    CHECK(!had_state);
    CHECK_OK(rk_reset_key(engine, login, KEY("rk"), NULL)); /* had_state_out is optional */
    CHECK_STATUS(rk_reset_key(NULL, login, KEY("rk"), &had_state), RK_ERR_NULL_POINTER);
    CHECK_STATUS(rk_reset_key(engine, login, NULL, 2, &had_state), RK_ERR_NULL_KEY);
    CHECK_STATUS(rk_reset_key(engine, 42, KEY("rk"), &had_state), RK_ERR_UNKNOWN_POLICY);
    /* the engine's own clock: the coarse clock never runs ahead of rk_now_ns */
    uint64_t engine_now = 0;
    CHECK_OK(rk_engine_now_ns(engine, &engine_now));
    CHECK(engine_now > 0 && engine_now <= rk_now_ns());
    CHECK_STATUS(rk_engine_now_ns(engine, NULL), RK_ERR_NULL_POINTER);
    CHECK_STATUS(rk_engine_now_ns(NULL, &engine_now), RK_ERR_NULL_POINTER);

    /* the engine clock (on another engine: mixing real and explicit times
     * in one table would let expired entries be reclaimed at random) */
    uint32_t clocked;
    CHECK_OK(rk_policy_add(other, "clocked", "5/minute", &clocked));
    CHECK_OK(rk_check(other, clocked, KEY("clock"), 1, &d));
    CHECK(d.allowed && d.remaining == 4);

    /* keys: NULL with length 0 is the empty key, distinct from others */
    CHECK_OK(rk_check_at(engine, login, NULL, 0, 5, now, &d));
    CHECK(d.allowed && d.remaining == 0);
    CHECK_OK(rk_check_at(engine, login, (const uint8_t *)"", 0, 1, now, &d));
    CHECK(!d.allowed); /* the same empty key */
    CHECK_OK(rk_check_at(engine, login, KEY("a"), 1, now, &d));
    CHECK(d.allowed);
    static const uint8_t binary[] = {0, 1, 2, 0, 255};
    CHECK_OK(rk_check_at(engine, login, binary, sizeof binary, 1, now, &d));
    CHECK(d.allowed && d.remaining == 4);

    /* costs: 0 charges nothing; more than the limit can ever allow is a decision */
    CHECK_OK(rk_check_at(engine, login, KEY("cost"), 0, now, &d));
    CHECK(d.allowed && d.remaining == 5);
    CHECK_OK(rk_check_at(engine, login, KEY("cost"), UINT32_MAX, now, &d));
    CHECK(!d.allowed && d.retry_after_ns == UINT64_MAX);

    /* errors leave *out untouched */
    memset(&sentinel, 0xab, sizeof sentinel);
    d = sentinel;
    CHECK_STATUS(rk_check(NULL, login, KEY("k"), 1, &d), RK_ERR_NULL_POINTER);
    CHECK_ERROR_MENTIONS("rk_check: `engine` is NULL");
    CHECK_STATUS(rk_check(engine, login, KEY("k"), 1, NULL), RK_ERR_NULL_POINTER);
    CHECK_STATUS(rk_check_at(engine, login, NULL, 3, 1, now, &d), RK_ERR_NULL_KEY);
    CHECK_ERROR_MENTIONS("`key` is NULL but `key_len` is 3");
    CHECK_STATUS(rk_check_at(engine, login, KEY("k"), 1, now, NULL), RK_ERR_NULL_POINTER);
    CHECK_STATUS(rk_check_at(engine, 42, KEY("k"), 1, now, &d), RK_ERR_UNKNOWN_POLICY);
    CHECK_ERROR_MENTIONS("rk_check_at: unknown policy id 42");
    CHECK_STATUS(rk_check_at(engine, jobs, KEY("k"), 1, now, &d), RK_ERR_WRONG_POLICY_KIND);
    CHECK_ERROR_MENTIONS("concurrency");
    CHECK_STATUS(rk_check(engine, jobs, KEY("k"), 1, &d), RK_ERR_WRONG_POLICY_KIND);
    CHECK_STATUS(rk_check_at(other, login + 5, KEY("k"), 1, now, &d), RK_ERR_UNKNOWN_POLICY);
    CHECK_STATUS(rk_peek(NULL, login, KEY("k"), 1, &d), RK_ERR_NULL_POINTER);
    CHECK_STATUS(rk_peek(engine, login, NULL, 1, 1, &d), RK_ERR_NULL_KEY);
    CHECK_STATUS(rk_peek_at(engine, 42, KEY("k"), 1, now, &d), RK_ERR_UNKNOWN_POLICY);
    CHECK_STATUS(rk_peek_at(engine, login, KEY("k"), 1, now, NULL), RK_ERR_NULL_POINTER);
    CHECK(memcmp(&d, &sentinel, sizeof d) == 0);

    refunded = true;
    CHECK_STATUS(rk_refund(NULL, login, KEY("k"), 1, &refunded), RK_ERR_NULL_POINTER);
    CHECK_STATUS(rk_refund(engine, login, NULL, 1, 1, &refunded), RK_ERR_NULL_KEY);
    CHECK_STATUS(rk_refund_at(engine, 42, KEY("k"), 1, now, &refunded), RK_ERR_UNKNOWN_POLICY);
    CHECK_STATUS(rk_refund_at(engine, jobs, KEY("k"), 1, now, &refunded), RK_ERR_WRONG_POLICY_KIND);
    CHECK(refunded);
    CHECK_STATUS(rk_reset(NULL, login, KEY("k")), RK_ERR_NULL_POINTER);
    CHECK_STATUS(rk_reset(engine, login, NULL, 2), RK_ERR_NULL_KEY);
    CHECK_STATUS(rk_reset(engine, 42, KEY("k")), RK_ERR_UNKNOWN_POLICY);

    /* statistics */
    rk_stats stats;
    CHECK_OK(rk_policy_stats(engine, login, &stats));
    CHECK(stats.allowed == 12 && stats.denied == 3);
    /* keys with state: the ip, "", "a", the binary key (peeks, the refund
     * of an unseen key and uncharged requests, such as "cost"'s, create
     * none; reset removed "r") */
    CHECK(stats.occupancy == 4 && stats.capacity >= 1024);
    CHECK(stats.evictions == 0 && stats.table_full == 0);

    rk_engine_free(other);
    rk_engine_free(engine);
}

static void test_permits(void) {
    rk_engine *engine = new_engine(1024);
    rk_engine *other = new_engine(1024);
    uint32_t jobs, login, other_jobs;
    rk_permit a, b, c, sentinel;
    rk_decision d;
    uint64_t released = 99;
    const uint64_t now = rk_now_ns(); /* rk_acquire and rk_acquire_timeout read the clock */
    CHECK_OK(rk_policy_add(engine, "jobs", "concurrency 2", &jobs));
    CHECK_OK(rk_policy_add(engine, "login", "5/minute", &login));
    CHECK_OK(rk_policy_add(other, "jobs", "concurrency 2", &other_jobs));

    CHECK_OK(rk_acquire_at(engine, jobs, KEY("user:1"), now, &a, &d));
    CHECK(d.allowed && d.limit == 2 && d.remaining == 1);
    CHECK(a.policy == jobs);
    CHECK_OK(rk_acquire(engine, jobs, KEY("user:1"), &b, &d));
    CHECK(d.allowed && d.remaining == 0);
    memset(&sentinel, 0x5a, sizeof sentinel);
    c = sentinel;
    CHECK_OK(rk_acquire_at(engine, jobs, KEY("user:1"), now, &c, &d));
    CHECK(!d.allowed && d.retry_after_ns > 0);
    CHECK(memcmp(&c, &sentinel, sizeof c) == 0); /* no permit: untouched */
    /* another key has its own permits */
    CHECK_OK(rk_acquire_at(engine, jobs, KEY("user:2"), now, &c, &d));
    CHECK(d.allowed);

    /* a timeout is a decision, not an error */
    c = sentinel;
    CHECK_OK(rk_acquire_timeout(engine, jobs, KEY("user:1"), 1000000, &c, &d));
    CHECK(!d.allowed);
    CHECK(memcmp(&c, &sentinel, sizeof c) == 0);

    /* release: a copy of the permit works like the original */
    rk_permit copy = a;
    CHECK_OK(rk_release(engine, &copy));
    CHECK_OK(rk_acquire_timeout(engine, jobs, KEY("user:1"), 1000000, &c, &d));
    CHECK(d.allowed);
    CHECK_OK(rk_release(engine, &c));
    CHECK_OK(rk_release(engine, &a)); /* a second release of the same lease does nothing */

    /* rk_release_permit says whether this call released the lease; a stale
       copy never frees the permit of whoever took the lease next, even at
       the same instant by the same process */
    {
        bool rel = false;
        rk_permit p1, p2;
        CHECK_OK(rk_acquire_at(engine, jobs, KEY("user:3"), now, &p1, &d));
        CHECK(d.allowed);
        rk_permit stale = p1;
        CHECK_OK(rk_release_permit(engine, &p1, &rel));
        CHECK(rel);
        CHECK_OK(rk_acquire_at(engine, jobs, KEY("user:3"), now, &p2, &d));
        CHECK(d.allowed);
        CHECK_OK(rk_release_permit(engine, &stale, &rel));
        CHECK(!rel);
        CHECK_OK(rk_release_permit(engine, &p2, &rel));
        CHECK(rel);
        CHECK_OK(rk_release_permit(engine, &p2, NULL));
        CHECK_STATUS(rk_release_permit(engine, NULL, &rel), RK_ERR_NULL_POINTER);
        CHECK_STATUS(rk_release_permit(NULL, &p2, &rel), RK_ERR_NULL_POINTER);
    }

    /* a permit from another engine, or altered */
    rk_permit theirs;
    CHECK_OK(rk_acquire_at(other, other_jobs, KEY("user:1"), now, &theirs, &d));
    CHECK(d.allowed);
    CHECK_STATUS(rk_release(engine, &theirs), RK_ERR_INVALID_PERMIT);
    CHECK_ERROR_MENTIONS("permit");
    CHECK_OK(rk_release(other, &theirs));
    rk_permit altered = b;
    altered.reserved = 1;
    CHECK_STATUS(rk_release(engine, &altered), RK_ERR_INVALID_PERMIT);
    memset(&altered, 0, sizeof altered);
    CHECK_STATUS(rk_release(engine, &altered), RK_ERR_INVALID_PERMIT);
    CHECK_STATUS(rk_release(engine, NULL), RK_ERR_NULL_POINTER);
    CHECK_ERROR_MENTIONS("`permit` is NULL");
    CHECK_STATUS(rk_release(NULL, &b), RK_ERR_NULL_POINTER);

    /* release_holder frees a dead process's permits only: this process,
     * which holds b (user:1) and c (user:2), is refused and keeps them */
    released = 99;
    CHECK_STATUS(rk_release_holder(engine, jobs, (uint32_t)getpid(), &released),
                 RK_ERR_INVALID_ARGUMENT);
    CHECK_ERROR_MENTIONS("this process");
    CHECK(released == 99);
    CHECK_STATUS(rk_release_holder(engine, jobs, 0, &released), RK_ERR_INVALID_ARGUMENT);
    CHECK_OK(rk_peek(engine, jobs, KEY("user:1"), 1, &d));
    CHECK(d.allowed && d.remaining == 0); /* b is still held */
    CHECK_OK(rk_peek(engine, jobs, KEY("user:2"), 1, &d));
    CHECK(d.allowed && d.remaining == 0); /* and so is user:2's */
    /* a child that has exited and been reaped held nothing here: 0 */
    pid_t child = fork();
    if (child == 0) {
        _exit(0);
    }
    CHECK(child > 0 && waitpid(child, NULL, 0) == child);
    CHECK_OK(rk_release_holder(engine, jobs, (uint32_t)child, &released));
    CHECK(released == 0);
    CHECK_OK(rk_release_holder(engine, jobs, (uint32_t)child, NULL));
    CHECK_OK(rk_release_holder(engine, login, (uint32_t)child, &released));
    CHECK(released == 0);
    bool freed = false;
    CHECK_OK(rk_release_permit(engine, &b, &freed));
    CHECK(freed);
    released = 99;
    CHECK_STATUS(rk_release_holder(engine, 42, 1, &released), RK_ERR_UNKNOWN_POLICY);
    CHECK_STATUS(rk_release_holder(NULL, jobs, 1, &released), RK_ERR_NULL_POINTER);
    CHECK(released == 99);

    /* argument errors */
    c = sentinel;
    CHECK_STATUS(rk_acquire(engine, login, KEY("k"), &c, &d), RK_ERR_WRONG_POLICY_KIND);
    CHECK_ERROR_MENTIONS("rate limit");
    CHECK_STATUS(rk_acquire_at(engine, login, KEY("k"), now, &c, &d), RK_ERR_WRONG_POLICY_KIND);
    CHECK_STATUS(rk_acquire_timeout(engine, login, KEY("k"), 1, &c, &d), RK_ERR_WRONG_POLICY_KIND);
    CHECK_STATUS(rk_acquire(NULL, jobs, KEY("k"), &c, &d), RK_ERR_NULL_POINTER);
    CHECK_STATUS(rk_acquire(engine, jobs, NULL, 1, &c, &d), RK_ERR_NULL_KEY);
    CHECK_STATUS(rk_acquire(engine, jobs, KEY("k"), NULL, &d), RK_ERR_NULL_POINTER);
    CHECK_ERROR_MENTIONS("`permit_out` is NULL");
    CHECK_STATUS(rk_acquire(engine, jobs, KEY("k"), &c, NULL), RK_ERR_NULL_POINTER);
    CHECK_STATUS(rk_acquire_at(engine, 42, KEY("k"), now, &c, &d), RK_ERR_UNKNOWN_POLICY);
    CHECK_STATUS(rk_acquire_timeout(engine, 42, KEY("k"), 1, &c, &d), RK_ERR_UNKNOWN_POLICY);
    CHECK(memcmp(&c, &sentinel, sizeof c) == 0);

    /* peek and reset work on concurrency policies too */
    CHECK_OK(rk_acquire_at(engine, jobs, KEY("p"), now, &a, &d));
    CHECK_OK(rk_peek_at(engine, jobs, KEY("p"), 1, now, &d));
    CHECK(d.allowed && d.remaining == 0);
    CHECK_OK(rk_reset(engine, jobs, KEY("p")));
    CHECK_OK(rk_peek_at(engine, jobs, KEY("p"), 1, now, &d));
    CHECK(d.allowed && d.remaining == 1);
    CHECK_OK(rk_release(engine, &a)); /* its lease is gone: nothing to do */

    /* a lease expires after its TTL (60 s by default) */
    CHECK_OK(rk_acquire_at(engine, jobs, KEY("ttl"), now, &a, &d));
    CHECK_OK(rk_acquire_at(engine, jobs, KEY("ttl"), now, &b, &d));
    CHECK_OK(rk_acquire_at(engine, jobs, KEY("ttl"), now + 30 * S, &c, &d));
    CHECK(!d.allowed);
    CHECK_OK(rk_acquire_at(engine, jobs, KEY("ttl"), now + 61 * S, &c, &d));
    CHECK(d.allowed);

    rk_engine_free(other);
    rk_engine_free(engine);
}

/* The first version of rk_policy_options, as a program compiled against
 * the first header has it. */
struct rk_policy_options_v1 {
    uint32_t struct_size;
    uint64_t capacity;
    uint32_t when_full;
};
_Static_assert(sizeof(struct rk_policy_options_v1) == POLICY_OPTIONS_V1_SIZE, "the first version");

static rk_policy_options options_for_shadow(void) {
    rk_policy_options o;
    rk_policy_options_init(&o);
    o.shadow = true;
    return o;
}

static void test_policy_options_versions(void) {
    rk_engine *engine = new_engine(64);
    rk_policy_options o;
    rk_decision d;
    uint32_t p = 999, again = 999;

    memset(&o, 0xff, sizeof o);
    rk_policy_options_init(&o); /* this header's macro: the sized init */
    CHECK(o.struct_size == sizeof o && o.capacity == 0 && o.when_full == RK_WHEN_FULL_EVICT);
    CHECK(!o.shadow && !o.record_keys && o.retry_jitter_ns == 0);
    CHECK(o.penalty_strikes == 0 && o.penalty_window_ns == 0 && o.penalty_ban_ns == 0 &&
          o.penalty_max_ban_ns == 0);

    /* An old program: its 24-byte struct on the heap, so that valgrind sees
     * any access past it (valgrind checks the library's own accesses too;
     * ASan only those of instrumented C code). It calls the exported
     * rk_policy_options_init (the parentheses bypass this header's macro,
     * as a program compiled against the first header does), which fills the
     * first version only; rk_policy_add_with reads no more than that, and
     * every new field gets its default. */
    struct rk_policy_options_v1 *v1 = malloc(sizeof *v1);
    CHECK(v1 != NULL);
    if (v1 == NULL)
        return;
    memset(v1, 0xff, sizeof *v1);
    (rk_policy_options_init)((rk_policy_options *)(void *)v1);
    CHECK(v1->struct_size == POLICY_OPTIONS_V1_SIZE && v1->capacity == 0 &&
          v1->when_full == RK_WHEN_FULL_EVICT);
    v1->capacity = 16;
    v1->when_full = RK_WHEN_FULL_FAIL_CLOSED;
    CHECK_OK(rk_policy_add_with(engine, "old", "1/second", (const rk_policy_options *)(void *)v1, &p));
    free(v1);
    CHECK_OK(rk_check_at(engine, p, KEY("k"), 1, S, &d));
    CHECK(d.allowed);
    CHECK_OK(rk_check_at(engine, p, KEY("k"), 1, S, &d));
    CHECK(!d.allowed && !d.shadow_denied && !d.banned && d.retry_after_ns == S); /* no jitter */
    /* The same policy asked for with today's defaults is the same policy. */
    rk_policy_options_init(&o);
    o.when_full = RK_WHEN_FULL_FAIL_CLOSED;
    CHECK_OK(rk_policy_add_with(engine, "old", "1/second", &o, &again));
    CHECK(again == p);
    /* ...but not with other abuse-control options. */
    o.shadow = true;
    CHECK_STATUS(rk_policy_add_with(engine, "old", "1/second", &o, &again), RK_ERR_POLICY_MISMATCH);
    CHECK_ERROR_MENTIONS("(shadow)");

    /* The sized init writes the newest version that fits, never more. */
    rk_policy_options *aligned = malloc(sizeof *aligned + 8);
    CHECK(aligned != NULL);
    if (aligned != NULL) {
        memset(aligned, 0xab, sizeof *aligned + 8);
        rk_policy_options_init_sized(aligned, POLICY_OPTIONS_V1_SIZE - 1); /* no version fits */
        CHECK(((unsigned char *)aligned)[0] == 0xab && ((unsigned char *)aligned)[22] == 0xab);
        rk_policy_options_init_sized(aligned, sizeof *aligned - 1);
        CHECK(aligned->struct_size == POLICY_OPTIONS_V1_SIZE);
        CHECK(((unsigned char *)aligned)[POLICY_OPTIONS_V1_SIZE] == 0xab);
        rk_policy_options_init_sized(aligned, sizeof *aligned + 8); /* a newer caller */
        CHECK(aligned->struct_size == sizeof *aligned && !aligned->shadow && !aligned->record_keys);
        CHECK(((unsigned char *)aligned)[sizeof *aligned] == 0xab);
        free(aligned);
    }
    rk_policy_options_init_sized(NULL, sizeof o); /* no-op */

    /* A bool byte that is neither 0 nor 1 (uninitialised memory). */
    rk_policy_options_init(&o);
    memset(&o.record_keys, 2, 1);
    p = 999;
    CHECK_STATUS(rk_policy_add_with(engine, "b", "1/second", &o, &p), RK_ERR_INVALID_ARGUMENT);
    CHECK_ERROR_MENTIONS("opts->record_keys is 2");
    rk_policy_options_init(&o);
    memset(&o.shadow, 0xff, 1);
    CHECK_STATUS(rk_policy_add_with(engine, "b", "1/second", &o, &p), RK_ERR_INVALID_ARGUMENT);
    CHECK_ERROR_MENTIONS("opts->shadow is 255");

    /* Invalid penalty boxes: the engine's message. */
    rk_policy_options_init(&o);
    o.penalty_strikes = 3;
    o.penalty_window_ns = 60 * S;
    o.penalty_ban_ns = 600 * S;
    o.penalty_max_ban_ns = 60 * S; /* shorter than the ban */
    CHECK_STATUS(rk_policy_add_with(engine, "b", "1/second", &o, &p), RK_ERR_INVALID_ARGUMENT);
    CHECK_ERROR_MENTIONS("penalty: ban must be positive and no longer than max_ban");
    o.penalty_max_ban_ns = 3600 * S;
    o.penalty_window_ns = 2; /* less than a nanosecond per strike */
    CHECK_STATUS(rk_policy_add_with(engine, "b", "1/second", &o, &p), RK_ERR_INVALID_ARGUMENT);
    CHECK_ERROR_MENTIONS("penalty: window must be at least one nanosecond per strike");
    o.penalty_window_ns = 60 * S;
    o.penalty_ban_ns = 0;
    CHECK_STATUS(rk_policy_add_with(engine, "b", "1/second", &o, &p), RK_ERR_INVALID_ARGUMENT);
    CHECK_ERROR_MENTIONS("penalty:");
    o.penalty_ban_ns = 600 * S;
    o.penalty_max_ban_ns = UINT64_MAX;
    CHECK_STATUS(rk_policy_add_with(engine, "b", "1/second", &o, &p), RK_ERR_INVALID_ARGUMENT);
    CHECK_ERROR_MENTIONS("penalty: durations overflow the clock");
    o.penalty_max_ban_ns = 3600 * S;
    CHECK_STATUS(rk_policy_add_with(engine, "b", "concurrency 2", &o, &p), RK_ERR_UNSUPPORTED_POLICY);
    CHECK_ERROR_MENTIONS("penalty box");
    o.penalty_strikes = 0; /* no penalty box, but its other settings given */
    CHECK_STATUS(rk_policy_add_with(engine, "b", "1/second", &o, &p), RK_ERR_INVALID_ARGUMENT);
    CHECK_ERROR_MENTIONS("penalty_strikes is 0");
    CHECK(p == 999);
    rk_engine_free(engine);
}

static void test_penalty_box(void) {
    rk_engine *engine = new_engine(64);
    rk_policy_options o;
    rk_decision d;
    rk_stats stats;
    uint32_t login;
    const uint64_t t0 = 1000 * S, min = 60 * S;
    /* 5/minute; 3 denials within 10 minutes ban for 15 minutes, doubling up to 4 hours. */
    rk_policy_options_init(&o);
    o.penalty_strikes = 3;
    o.penalty_window_ns = 10 * min;
    o.penalty_ban_ns = 15 * min;
    o.penalty_max_ban_ns = 240 * min;
    CHECK_OK(rk_policy_add_with(engine, "login", "5/minute", &o, &login));
    for (int i = 0; i < 5; i++) {
        CHECK_OK(rk_check_at(engine, login, KEY("ip:1"), 1, t0, &d));
        CHECK(d.allowed && !d.banned);
    }
    for (int i = 0; i < 2; i++) { /* two strikes: ordinary denials */
        CHECK_OK(rk_check_at(engine, login, KEY("ip:1"), 1, t0, &d));
        CHECK(!d.allowed && !d.banned && d.retry_after_ns == 12 * S);
    }
    /* the third denial bans the key for the ban length */
    CHECK_OK(rk_check_at(engine, login, KEY("ip:1"), 1, t0, &d));
    CHECK(!d.allowed && d.banned && d.retry_after_ns == 15 * min);
    /* still banned when the quota has long refilled; other keys are not */
    CHECK_OK(rk_check_at(engine, login, KEY("ip:1"), 1, t0 + 10 * min, &d));
    CHECK(!d.allowed && d.banned && d.retry_after_ns == 5 * min);
    CHECK_OK(rk_check_at(engine, login, KEY("ip:2"), 1, t0 + 10 * min, &d));
    CHECK(d.allowed && !d.banned);
    /* one ban; two denials by it (the one that started it, and one during it) */
    CHECK_OK(rk_policy_stats_sized(engine, login, &stats, sizeof stats));
    CHECK(stats.bans == 1 && stats.banned == 2 && stats.denied == 4 && stats.shadow_denied == 0);
    /* a batch sees the ban too */
    rk_check_item item = {login, (const uint8_t *)"ip:1", 4, 1};
    size_t index = 99;
    CHECK_OK(rk_check_many_at(engine, &item, 1, t0 + 10 * min, &d, &index));
    CHECK(!d.allowed && d.banned && index == 0 && d.retry_after_ns == 5 * min);
    /* after the ban: allowed again */
    CHECK_OK(rk_check_at(engine, login, KEY("ip:1"), 1, t0 + 15 * min, &d));
    CHECK(d.allowed && !d.banned);
    /* the ban shows in the deny events: ip:1's first denial at t0, the one
       that started the ban (always written), one denial at t0 + 10 min (the
       batch's, in the same second, is sampled out) */
    rk_deny_event ev[8];
    size_t n = 0;
    CHECK_OK(rk_recent_denials(engine, login, 0, ev, 8, &n));
    CHECK(n == 3);
    if (n == 3) {
        CHECK(!ev[0].banned && ev[1].banned && ev[2].banned);
        CHECK(ev[1].retry_after_ns == 15 * min && ev[2].retry_after_ns == 5 * min);
        CHECK(ev[0].time_ns == t0 && ev[1].time_ns == t0 && ev[2].time_ns == t0 + 10 * min);
    }
    /* reset lifts a ban */
    for (int i = 0; i < 9; i++)
        CHECK_OK(rk_check_at(engine, login, KEY("ip:3"), 1, t0, &d));
    CHECK(d.banned);
    CHECK_OK(rk_reset(engine, login, KEY("ip:3")));
    CHECK_OK(rk_check_at(engine, login, KEY("ip:3"), 1, t0, &d));
    CHECK(d.allowed && !d.banned);
    rk_engine_free(engine);
}

static void test_shadow_mode_and_jitter(void) {
    rk_engine *engine = new_engine(64);
    rk_policy_options o = options_for_shadow();
    rk_decision d;
    rk_stats stats;
    uint32_t shadow, jittery;
    CHECK_OK(rk_policy_add_with(engine, "new-limit", "2/minute", &o, &shadow));
    for (int i = 0; i < 2; i++) {
        CHECK_OK(rk_check_at(engine, shadow, KEY("u"), 1, S, &d));
        CHECK(d.allowed && !d.shadow_denied);
    }
    /* would be denied: passes, flagged, with the denial's figures */
    for (int i = 0; i < 3; i++) {
        CHECK_OK(rk_check_at(engine, shadow, KEY("u"), 1, S, &d));
        CHECK(d.allowed && d.shadow_denied && !d.banned);
        CHECK(d.retry_after_ns == 30 * S && d.remaining == 0 && d.limit == 2);
    }
    CHECK_OK(rk_policy_stats_sized(engine, shadow, &stats, sizeof stats));
    CHECK(stats.allowed == 2 && stats.denied == 3 && stats.shadow_denied == 3);
    CHECK(stats.banned == 0 && stats.bans == 0);
    rk_deny_event ev[4];
    size_t n = 0;
    CHECK_OK(rk_recent_denials(engine, shadow, 0, ev, 4, &n));
    /* three denials of one key within a second: one event, the totals count all */
    CHECK(n == 1 && ev[0].shadow && !ev[0].banned);

    /* retry jitter: never shorter than the true wait, at most the jitter more */
    rk_policy_options_init(&o);
    o.retry_jitter_ns = 2 * S;
    CHECK_OK(rk_policy_add_with(engine, "jittery", "1/minute", &o, &jittery));
    CHECK_OK(rk_check_at(engine, jittery, KEY("u"), 1, S, &d));
    int spread = 0;
    uint64_t first = 0;
    for (int i = 0; i < 50; i++) {
        CHECK_OK(rk_check_at(engine, jittery, KEY("u"), 1, S, &d));
        CHECK(!d.allowed && d.retry_after_ns >= 60 * S && d.retry_after_ns <= 62 * S);
        if (i == 0)
            first = d.retry_after_ns;
        else if (d.retry_after_ns != first)
            spread = 1;
    }
    CHECK(spread);
    rk_engine_free(engine);
}

static void test_check_many(void) {
    rk_engine *engine = new_engine(1024);
    rk_engine *clocked = new_engine(1024);
    uint32_t ip, route, user, jobs, clock_ip;
    rk_decision d, sentinel;
    size_t index;
    const uint64_t now = 1000 * S;
    CHECK_OK(rk_policy_add(engine, "ip", "10/minute", &ip));
    CHECK_OK(rk_policy_add(engine, "route", "fixed_window 3/minute", &route));
    CHECK_OK(rk_policy_add(engine, "user", "sliding_log 5/minute", &user));
    CHECK_OK(rk_policy_add(engine, "jobs", "concurrency 2", &jobs));

    rk_check_item items[3] = {
        {ip, (const uint8_t *)"ip:1", 4, 1},
        {route, (const uint8_t *)"/login", 6, 1},
        {user, (const uint8_t *)"user:7", 6, 1},
    };
    /* allowed: the binding item is the one with the fewest remaining */
    CHECK_OK(rk_check_many_at(engine, items, 3, now, &d, &index));
    CHECK(d.allowed && index == 1 && d.limit == 3 && d.remaining == 2);
    CHECK_OK(rk_check_many_at(engine, items, 3, now, &d, &index));
    CHECK_OK(rk_check_many_at(engine, items, 3, now, &d, NULL)); /* index_out is optional */
    CHECK(d.allowed && d.remaining == 0);
    /* the route is used up: the batch is denied and nothing is charged */
    index = 99;
    CHECK_OK(rk_check_many_at(engine, items, 3, now, &d, &index));
    CHECK(!d.allowed && index == 1 && d.retry_after_ns > 0 && !d.banned && !d.shadow_denied);
    rk_decision peek;
    CHECK_OK(rk_peek_at(engine, ip, KEY("ip:1"), 1, now, &peek));
    CHECK(peek.remaining == 6); /* 10 - 3 charged - this peek; the denied batch took nothing */
    CHECK_OK(rk_peek_at(engine, user, KEY("user:7"), 1, now, &peek));
    CHECK(peek.remaining == 1);
    /* the denial counts against the binding item only */
    rk_stats stats;
    CHECK_OK(rk_policy_stats(engine, route, &stats));
    CHECK(stats.allowed == 3 && stats.denied == 1);
    CHECK_OK(rk_policy_stats(engine, ip, &stats));
    CHECK(stats.allowed == 3 && stats.denied == 0);

    /* one item is a plain check; NULL key with length 0 is the empty key */
    rk_check_item empty = {ip, NULL, 0, 2};
    CHECK_OK(rk_check_many_at(engine, &empty, 1, now, &d, &index));
    CHECK(d.allowed && d.remaining == 8 && index == 0);

    /* more items than the stack batch (17: the heap path) */
    rk_check_item many[17];
    char keys[17][16];
    for (int i = 0; i < 17; i++) {
        snprintf(keys[i], sizeof keys[i], "k%u", (unsigned)i);
        many[i] = (rk_check_item){ip, (const uint8_t *)keys[i], strlen(keys[i]), (uint32_t)(i == 9 ? 4 : 1)};
    }
    CHECK_OK(rk_check_many_at(engine, many, 17, now, &d, &index));
    CHECK(d.allowed && index == 9 && d.remaining == 6);

    /* the engine clock (its own engine: explicit and real times don't mix) */
    CHECK_OK(rk_policy_add(clocked, "ip", "10/minute", &clock_ip));
    rk_check_item c = {clock_ip, (const uint8_t *)"ip:1", 4, 1};
    CHECK_OK(rk_check_many(clocked, &c, 1, &d, &index));
    CHECK(d.allowed && d.remaining == 9 && index == 0);

    /* errors: outs untouched, nothing charged */
    memset(&sentinel, 0xab, sizeof sentinel);
    d = sentinel;
    index = 12345;
    CHECK_STATUS(rk_check_many_at(engine, items, 0, now, &d, &index), RK_ERR_INVALID_ARGUMENT);
    CHECK_ERROR_MENTIONS("`n` is 0");
    CHECK_STATUS(rk_check_many_at(engine, NULL, 0, now, &d, &index), RK_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(rk_check_many_at(engine, NULL, 2, now, &d, &index), RK_ERR_NULL_POINTER);
    CHECK_ERROR_MENTIONS("rk_check_many_at: `items` is NULL");
    CHECK_STATUS(rk_check_many(engine, NULL, 1, &d, &index), RK_ERR_NULL_POINTER);
    CHECK_STATUS(rk_check_many(NULL, items, 3, &d, &index), RK_ERR_NULL_POINTER);
    CHECK_ERROR_MENTIONS("rk_check_many: `engine` is NULL");
    CHECK_STATUS(rk_check_many_at(engine, items, 3, now, NULL, &index), RK_ERR_NULL_POINTER);
    CHECK_ERROR_MENTIONS("`out` is NULL");
    rk_check_item bad[2] = {{ip, (const uint8_t *)"fresh", 5, 1}, {route, NULL, 3, 1}};
    CHECK_STATUS(rk_check_many_at(engine, bad, 2, now, &d, &index), RK_ERR_NULL_KEY);
    CHECK_ERROR_MENTIONS("`items[1].key` is NULL but its `key_len` is 3");
    many[16].key = NULL;
    CHECK_STATUS(rk_check_many_at(engine, many, 17, now, &d, &index), RK_ERR_NULL_KEY);
    CHECK_ERROR_MENTIONS("items[16]");
    rk_check_item unknown[2] = {{ip, (const uint8_t *)"fresh", 5, 1}, {42, (const uint8_t *)"x", 1, 1}};
    CHECK_STATUS(rk_check_many_at(engine, unknown, 2, now, &d, &index), RK_ERR_UNKNOWN_POLICY);
    CHECK_ERROR_MENTIONS("unknown policy id 42");
    rk_check_item wrong[2] = {{ip, (const uint8_t *)"fresh", 5, 1}, {jobs, (const uint8_t *)"x", 1, 1}};
    CHECK_STATUS(rk_check_many_at(engine, wrong, 2, now, &d, &index), RK_ERR_WRONG_POLICY_KIND);
    CHECK_ERROR_MENTIONS("concurrency");
    CHECK(memcmp(&d, &sentinel, sizeof d) == 0 && index == 12345);
    CHECK_OK(rk_peek_at(engine, ip, KEY("fresh"), 1, now, &peek));
    CHECK(peek.remaining == 9); /* no failed batch charged "fresh" */

    rk_engine_free(clocked);
    rk_engine_free(engine);
}

static void test_overrides(void) {
    rk_engine *engine = new_engine(64);
    uint32_t api, jobs, log;
    rk_decision d;
    double f = -1.0;
    CHECK_OK(rk_policy_add(engine, "api", "10/second", &api));
    CHECK_OK(rk_policy_add(engine, "jobs", "concurrency 2", &jobs));
    CHECK_OK(rk_policy_add(engine, "log", "sliding_log 3/second", &log));

    CHECK_OK(rk_override_get(engine, api, KEY("key:partner"), &f));
    CHECK(f == 0.0); /* none */
    CHECK_OK(rk_override_set(engine, api, KEY("key:partner"), 10.0));
    CHECK_OK(rk_override_get(engine, api, KEY("key:partner"), &f));
    CHECK(f == 10.0);
    CHECK_OK(rk_check_at(engine, api, KEY("key:partner"), 1, S, &d));
    CHECK(d.allowed && d.limit == 100 && d.remaining == 99);
    CHECK_OK(rk_check_at(engine, api, KEY("key:other"), 1, S, &d));
    CHECK(d.limit == 10); /* other keys keep the policy's quota */
    /* a factor below 1 */
    CHECK_OK(rk_override_set(engine, api, KEY("key:suspect"), 0.2));
    CHECK_OK(rk_check_at(engine, api, KEY("key:suspect"), 1, S, &d));
    CHECK(d.allowed && d.limit == 2);
    /* kept in thousandths */
    CHECK_OK(rk_override_set(engine, api, KEY("key:odd"), 1.0004));
    CHECK_OK(rk_override_get(engine, api, KEY("key:odd"), &f));
    CHECK(f == 1.0);
    /* the empty key can have one too */
    CHECK_OK(rk_override_set(engine, api, NULL, 0, 3.0));
    CHECK_OK(rk_override_get(engine, api, (const uint8_t *)"", 0, &f));
    CHECK(f == 3.0);
    /* clear: back to the policy's quota at once; clearing twice is fine */
    CHECK_OK(rk_override_clear(engine, api, KEY("key:partner")));
    CHECK_OK(rk_override_clear(engine, api, KEY("key:partner")));
    CHECK_OK(rk_override_clear(engine, api, KEY("key:never-set")));
    CHECK_OK(rk_override_get(engine, api, KEY("key:partner"), &f));
    CHECK(f == 0.0);
    CHECK_OK(rk_check_at(engine, api, KEY("key:partner"), 1, S, &d));
    CHECK(d.limit == 10);
    /* sliding_log limits keep their count */
    CHECK_OK(rk_override_set(engine, log, KEY("k"), 5.0));
    CHECK_OK(rk_check_at(engine, log, KEY("k"), 1, S, &d));
    CHECK(d.limit == 3);

    /* errors */
    CHECK_STATUS(rk_override_set(engine, api, KEY("k"), 0.0), RK_ERR_INVALID_ARGUMENT);
    CHECK_ERROR_MENTIONS("between 0.001 and");
    CHECK_STATUS(rk_override_set(engine, api, KEY("k"), -2.0), RK_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(rk_override_set(engine, api, KEY("k"), 1e9), RK_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(rk_override_set(engine, api, KEY("k"), (double)NAN), RK_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(rk_override_set(engine, api, KEY("k"), (double)INFINITY), RK_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(rk_override_set(engine, jobs, KEY("k"), 2.0), RK_ERR_WRONG_POLICY_KIND);
    CHECK_STATUS(rk_override_set(engine, 42, KEY("k"), 2.0), RK_ERR_UNKNOWN_POLICY);
    CHECK_STATUS(rk_override_set(NULL, api, KEY("k"), 2.0), RK_ERR_NULL_POINTER);
    CHECK_STATUS(rk_override_set(engine, api, NULL, 2, 2.0), RK_ERR_NULL_KEY);
    CHECK_STATUS(rk_override_clear(NULL, api, KEY("k")), RK_ERR_NULL_POINTER);
    CHECK_STATUS(rk_override_clear(engine, api, NULL, 2), RK_ERR_NULL_KEY);
    CHECK_STATUS(rk_override_clear(engine, 42, KEY("k")), RK_ERR_UNKNOWN_POLICY);
    f = -1.0;
    CHECK_STATUS(rk_override_get(NULL, api, KEY("k"), &f), RK_ERR_NULL_POINTER);
    CHECK_STATUS(rk_override_get(engine, api, NULL, 2, &f), RK_ERR_NULL_KEY);
    CHECK_STATUS(rk_override_get(engine, 42, KEY("k"), &f), RK_ERR_UNKNOWN_POLICY);
    CHECK_STATUS(rk_override_get(engine, api, KEY("k"), NULL), RK_ERR_NULL_POINTER);
    CHECK_ERROR_MENTIONS("`factor_out` is NULL");
    CHECK(f == -1.0);

    /* a full override table */
    uint32_t small;
    CHECK_OK(rk_policy_add(engine, "small", "1/second", &small));
    rk_status last = RK_OK;
    for (uint32_t i = 0; i <= RK_MAX_OVERRIDES && last == RK_OK; i++) {
        char k[16];
        snprintf(k, sizeof k, "o%u", (unsigned)i);
        last = rk_override_set(engine, small, KEY(k), 2.0);
    }
    CHECK_STATUS(last, RK_ERR_UNSUPPORTED_POLICY);
    CHECK_ERROR_MENTIONS("override table is full");
    rk_engine_free(engine);
}

static void test_recent_denials(void) {
    rk_engine *engine = new_engine(64);
    rk_policy_options o;
    uint32_t keyed, plain;
    rk_decision d;
    rk_deny_event ev[4], sentinel;
    size_t n = 0;
    rk_policy_options_init(&o);
    o.record_keys = true;
    CHECK_OK(rk_policy_add_with(engine, "keyed", "1/minute;fixed_window 100/hour", &o, &keyed));
    CHECK_OK(rk_policy_add(engine, "plain", "1/second", &plain));

    CHECK_OK(rk_recent_denials(engine, keyed, 0, ev, 4, &n));
    CHECK(n == 0); /* none yet */
    char long_key[120];
    memset(long_key, 'x', sizeof long_key);
    CHECK_OK(rk_check_at(engine, keyed, (const uint8_t *)long_key, sizeof long_key, 1, S, &d));
    /* six denials 1.1 s apart: each starts a new sampling interval, so each
       is an event (a denial within a second of the key's last event is not) */
    const uint64_t gap = S + S / 10;
    for (uint64_t i = 0; i < 6; i++) {
        CHECK_OK(rk_check_at(engine, keyed, (const uint8_t *)long_key, sizeof long_key, 1, S + i * gap, &d));
        CHECK(!d.allowed);
        CHECK_OK(rk_check_at(engine, keyed, (const uint8_t *)long_key, sizeof long_key, 1, S + i * gap + 1, &d));
        CHECK(!d.allowed);
    }
    CHECK_OK(rk_check_at(engine, keyed, KEY("ip:203.0.113.7"), 1, 2 * S, &d));
    CHECK_OK(rk_check_at(engine, keyed, KEY("ip:203.0.113.7"), 1, 2 * S, &d));
    CHECK(!d.allowed);

    /* follow: the oldest `capacity` events, then last ticket + 1 */
    uint64_t since = 0, seen = 0, last_ticket = 0;
    for (int round = 0; round < 4; round++) {
        n = 99;
        CHECK_OK(rk_recent_denials(engine, keyed, since, ev, 4, &n));
        CHECK(n <= 4);
        for (size_t i = 0; i < n; i++) {
            CHECK(ev[i].ticket == seen); /* in order, none missed */
            last_ticket = ev[i].ticket;
            seen++;
        }
        if (n == 0)
            break;
        since = last_ticket + 1;
    }
    CHECK(seen == 7);
    CHECK_OK(rk_recent_denials(engine, keyed, 0, ev, 4, &n));
    CHECK(n == 4);
    CHECK(ev[0].ticket == 0 && ev[0].time_ns == S && ev[3].time_ns == S + 3 * gap);
    CHECK(ev[0].has_key && ev[0].key_len == RK_EVENT_KEY_BYTES);
    CHECK(memcmp(ev[0].key, long_key, RK_EVENT_KEY_BYTES) == 0);
    CHECK(ev[0].retry_after_ns == 60 * S && ev[0].limit_index == 0 && !ev[0].banned && !ev[0].shadow);
    CHECK(ev[0].key_hash != 0 && ev[0].key_hash == ev[1].key_hash);
    CHECK_OK(rk_recent_denials(engine, keyed, 6, ev, 4, &n));
    CHECK(n == 1 && ev[0].ticket == 6 && ev[0].key_len == 14);
    CHECK(memcmp(ev[0].key, "ip:203.0.113.7", 14) == 0 && ev[0].key[14] == 0);
    CHECK(ev[0].retry_after_ns == 60 * S && ev[0].time_ns == 2 * S);
    CHECK_OK(rk_recent_denials(engine, keyed, 7, ev, 4, &n));
    CHECK(n == 0);
    CHECK_OK(rk_recent_denials(engine, keyed, UINT64_MAX, ev, 4, &n));
    CHECK(n == 0);
    CHECK_OK(rk_recent_denials(engine, keyed, 0, NULL, 0, &n));
    CHECK(n == 0);

    /* a policy without record_keys keeps the hash only */
    CHECK_OK(rk_check_at(engine, plain, KEY("secret"), 1, S, &d));
    CHECK_OK(rk_check_at(engine, plain, KEY("secret"), 1, S, &d));
    CHECK_OK(rk_recent_denials(engine, plain, 0, ev, 4, &n));
    CHECK(n == 1 && !ev[0].has_key && ev[0].key_len == 0 && ev[0].key_hash != 0);
    static const uint8_t zeros[RK_EVENT_KEY_BYTES] = {0};
    CHECK(memcmp(ev[0].key, zeros, sizeof zeros) == 0);

    /* the ring keeps the last RK_DENY_RING_ENTRIES: one denying key each */
    for (int i = 0; i < RK_DENY_RING_ENTRIES + 10; i++) {
        char key[32];
        int len = snprintf(key, sizeof key, "client:%d", i);
        for (int j = 0; j < 2; j++)
            CHECK_OK(rk_check_at(engine, plain, (const uint8_t *)key, (size_t)len, 1, S, &d));
        CHECK(!d.allowed);
    }
    rk_deny_event *all = calloc(RK_DENY_RING_ENTRIES + 1, sizeof *all);
    CHECK(all != NULL);
    if (all != NULL) {
        CHECK_OK(rk_recent_denials(engine, plain, 0, all, RK_DENY_RING_ENTRIES + 1, &n));
        CHECK(n == RK_DENY_RING_ENTRIES && all[0].ticket == 11 && all[n - 1].ticket == 11 + n - 1);
        free(all);
    }

    /* errors: nothing written */
    memset(&sentinel, 0x5a, sizeof sentinel);
    ev[0] = sentinel;
    n = 99;
    CHECK_STATUS(rk_recent_denials(NULL, plain, 0, ev, 4, &n), RK_ERR_NULL_POINTER);
    CHECK_STATUS(rk_recent_denials(engine, 42, 0, ev, 4, &n), RK_ERR_UNKNOWN_POLICY);
    CHECK_STATUS(rk_recent_denials(engine, plain, 0, NULL, 4, &n), RK_ERR_NULL_POINTER);
    CHECK_ERROR_MENTIONS("`events` is NULL");
    CHECK_STATUS(rk_recent_denials(engine, plain, 0, ev, 4, NULL), RK_ERR_NULL_POINTER);
    CHECK_ERROR_MENTIONS("`count_out` is NULL");
    CHECK(n == 99 && memcmp(&ev[0], &sentinel, sizeof sentinel) == 0);
    rk_engine_free(engine);
}

static void test_stats_versions(void) {
    rk_engine *engine = new_engine(64);
    rk_policy_options o = options_for_shadow();
    rk_decision d;
    rk_stats s;
    uint32_t p;
    CHECK_OK(rk_policy_add_with(engine, "p", "1/second", &o, &p));
    CHECK_OK(rk_check_at(engine, p, KEY("k"), 1, S, &d));
    CHECK_OK(rk_check_at(engine, p, KEY("k"), 1, S, &d));

    /* The exported rk_policy_stats writes the first version only (48
     * bytes): an old program's 48-byte struct on the heap, checked by
     * valgrind. (The parentheses bypass this header's macro. The void *
     * step keeps GCC 14's -Walloc-size from calling the short allocation
     * an error: it is the point.) */
    void *old_bytes = malloc(RK_STATS_V1_SIZE);
    rk_stats *old = old_bytes;
    CHECK(old != NULL);
    if (old != NULL) {
        CHECK_OK((rk_policy_stats)(engine, p, old));
        CHECK(old->allowed == 1 && old->denied == 1 && old->occupancy == 1 && old->capacity >= 64);
        free(old);
    }
    memset(&s, 0xee, sizeof s);
    CHECK_OK((rk_policy_stats)(engine, p, &s));
    CHECK(s.allowed == 1 && s.shadow_denied == 0xeeeeeeeeeeeeeeeeull); /* untouched */
    CHECK_STATUS((rk_policy_stats)(engine, 42, &s), RK_ERR_UNKNOWN_POLICY);
    /* rk_policy_stats as compiled against this header: every field */
    memset(&s, 0xee, sizeof s);
    CHECK_OK(rk_policy_stats(engine, p, &s));
    CHECK(s.allowed == 1 && s.denied == 1 && s.shadow_denied == 1 && s.banned == 0 && s.bans == 0);

    memset(&s, 0xee, sizeof s);
    CHECK_OK(rk_policy_stats_sized(engine, p, &s, sizeof s));
    CHECK(s.allowed == 1 && s.denied == 1 && s.shadow_denied == 1 && s.banned == 0 && s.bans == 0);
    memset(&s, 0xee, sizeof s);
    CHECK_OK(rk_policy_stats_sized(engine, p, &s, RK_STATS_V1_SIZE + 8));
    CHECK(s.shadow_denied == 1 && s.banned == 0xeeeeeeeeeeeeeeeeull);
    memset(&s, 0xee, sizeof s);
    CHECK_STATUS(rk_policy_stats_sized(engine, p, &s, RK_STATS_V1_SIZE - 1), RK_ERR_INVALID_ARGUMENT);
    CHECK_ERROR_MENTIONS("out_size is 47");
    CHECK_STATUS(rk_policy_stats_sized(engine, p, NULL, sizeof s), RK_ERR_NULL_POINTER);
    CHECK_STATUS(rk_policy_stats_sized(engine, 42, &s, sizeof s), RK_ERR_UNKNOWN_POLICY);
    CHECK_STATUS(rk_policy_stats_sized(NULL, p, &s, sizeof s), RK_ERR_NULL_POINTER);
    CHECK(s.allowed == 0xeeeeeeeeeeeeeeeeull);
    rk_engine_free(engine);
}

int main(void) {
    test_status_strings_and_version();
    test_engine_options();
    test_open_shared();
    test_policies();
    test_checks();
    test_permits();
    test_policy_options_versions();
    test_penalty_box();
    test_shadow_mode_and_jitter();
    test_check_many();
    test_overrides();
    test_recent_denials();
    test_stats_versions();
    return check_report("test_api");
}
