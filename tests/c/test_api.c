/* Every function of the C API and every error status it can return, from C.
 * Deterministic: every time-dependent call takes an explicit now_ns. */
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#include "check.h"

#define S 1000000000ull
#define KEY(s) (const uint8_t *)(s), strlen(s)

/* The layout of the public structs is ABI: pin it. */
_Static_assert(sizeof(rk_decision) == 48, "rk_decision layout");
_Static_assert(sizeof(rk_engine_options) == 40, "rk_engine_options layout");
_Static_assert(sizeof(rk_policy_options) == 24, "rk_policy_options layout");
_Static_assert(sizeof(rk_permit) == 48, "rk_permit layout");
_Static_assert(sizeof(rk_stats) == 48, "rk_stats layout");
_Static_assert(sizeof(rk_limit) == 32, "rk_limit layout");
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
        "RK_ERR_PANIC", "RK_ERR_BUFFER_TOO_SMALL",
    };
    const rk_status values[] = {
        RK_OK, RK_ERR_NULL_POINTER, RK_ERR_NULL_KEY, RK_ERR_INVALID_UTF8, RK_ERR_PARSE,
        RK_ERR_UNSUPPORTED_POLICY, RK_ERR_POLICY_MISMATCH, RK_ERR_UNKNOWN_POLICY,
        RK_ERR_TOO_MANY_POLICIES, RK_ERR_WRONG_POLICY_KIND, RK_ERR_INVALID_PERMIT,
        RK_ERR_TIMEOUT, RK_ERR_OUT_OF_MEMORY, RK_ERR_IO, RK_ERR_CORRUPT,
        RK_ERR_UNSUPPORTED_PLATFORM, RK_ERR_INVALID_ARGUMENT, RK_ERR_PANIC,
        RK_ERR_BUFFER_TOO_SMALL,
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        const char *s = rk_status_str((uint32_t)i);
        CHECK(values[i] == (rk_status)i); /* values are explicit and never renumbered */
        CHECK(s != NULL && strncmp(s, names[i], strlen(names[i])) == 0 && s[strlen(names[i])] == ':');
    }
    CHECK(strcmp(rk_status_str(19), "unknown rk_status value") == 0);
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
        }
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
    CHECK(stats.allowed == 11 && stats.denied == 3);
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

    /* release_holder: this process holds b (user:1) and c (user:2) */
    CHECK_OK(rk_release_holder(engine, jobs, (uint32_t)getpid(), &released));
    CHECK(released == 2);
    CHECK_OK(rk_release_holder(engine, jobs, (uint32_t)getpid(), NULL));
    CHECK_OK(rk_release_holder(engine, login, (uint32_t)getpid(), &released));
    CHECK(released == 0);
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

int main(void) {
    test_status_strings_and_version();
    test_engine_options();
    test_open_shared();
    test_policies();
    test_checks();
    test_permits();
    return check_report("test_api");
}
