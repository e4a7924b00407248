/* The Redis backend through the C ABI: two engines on one Redis (two
 * "hosts") enforce one limit together; Redis TIME; stats; the errors of
 * rk_engine_open_redis.
 *
 * Needs a redis-server started with a password: tests/c/run.sh starts one
 * on a free port, sets RK_TEST_REDIS_URL (with the right password) and
 * RK_TEST_REDIS_WRONG_PASSWORD_URL, and stops it by its PID. Without
 * RK_TEST_REDIS_URL the test says SKIP and passes (run.sh fails instead
 * in CI, where redis-server is always installed). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"

#define KEY(s) (const uint8_t *)(s), strlen(s)

static const uint64_t SECOND = 1000000000ull;

/* Two engines on the same prefix, checked in turn with one explicit time:
 * exactly the quota is admitted in total. */
static void two_engines_share_one_limit(const char *url, const char *prefix) {
    rk_redis_options opts;
    rk_redis_options_init(&opts);
    CHECK(opts.struct_size == sizeof(rk_redis_options));
    CHECK(opts.on_failure == RK_ON_FAILURE_LOCAL && opts.timeout_ms == 100);
    opts.prefix = prefix;
    opts.connect_timeout_ms = 1000;
    opts.timeout_ms = 1000; /* generous: valgrind is slow */
    rk_engine *a = NULL, *b = NULL;
    CHECK_OK(rk_engine_open_redis(url, &opts, &a));
    CHECK_OK(rk_engine_open_redis(url, &opts, &b));
    if (a == NULL || b == NULL) {
        rk_engine_free(a);
        rk_engine_free(b);
        return;
    }
    uint32_t pa = 99, pb = 99;
    CHECK_OK(rk_policy_add(a, "login", "3/minute", &pa));
    CHECK_OK(rk_policy_add(b, "login", "3/minute", &pb));

    const uint64_t now = 1000 * SECOND;
    rk_decision d;
    memset(&d, 0, sizeof d);
    int allowed = 0;
    for (int i = 0; i < 8; i++) {
        rk_engine *e = (i % 2) ? b : a;
        CHECK_OK(rk_check_at(e, (i % 2) ? pb : pa, KEY("ip:192.0.2.1"), 1, now, &d));
        allowed += d.allowed ? 1 : 0;
    }
    CHECK(allowed == 3);
    CHECK(!d.allowed && d.limit == 3 && d.remaining == 0);
    CHECK(d.retry_after_ns > 0 && d.retry_after_ns <= 20 * SECOND);

    /* Other keys are independent; without a time, Redis TIME decides. */
    CHECK_OK(rk_check(b, pb, KEY("ip:192.0.2.2"), 1, &d));
    CHECK(d.allowed && d.limit == 3 && d.remaining == 2);
    CHECK_OK(rk_peek(a, pa, KEY("ip:192.0.2.2"), 1, &d));
    CHECK(d.allowed && d.remaining == 1);

    /* A policy of two limits is still one round trip per check. */
    uint32_t two = 99;
    CHECK_OK(rk_policy_add(a, "api", "10/second; 1000/hour", &two));
    rk_redis_stats before, after;
    CHECK_OK(rk_engine_redis_stats(a, &before));
    CHECK_OK(rk_check(a, two, KEY("key:abc"), 1, &d));
    CHECK(d.allowed && d.remaining == 9 && d.limit_index == 0);
    CHECK_OK(rk_engine_redis_stats(a, &after));
    CHECK(after.up);
    CHECK(after.round_trips == before.round_trips + 1);
    CHECK(after.errors == 0 && after.failovers == 0 && after.fallback_decisions == 0);

    /* Both engines cached the denial (the deny cache); the engine that
     * resets the key forgets it at once. (The other answers from its cache
     * until the retry-after it saw has passed.) */
    CHECK(after.deny_cache_hits >= 1);
    CHECK_OK(rk_reset(a, pa, KEY("ip:192.0.2.1")));
    CHECK_OK(rk_check_at(a, pa, KEY("ip:192.0.2.1"), 1, now, &d));
    CHECK(d.allowed && d.remaining == 2);

    rk_engine_free(a);
    rk_engine_free(b);
}

static void open_errors_are_clear(const char *wrong_password_url) {
    rk_engine *e = NULL;
    CHECK_STATUS(rk_engine_open_redis("http://127.0.0.1:6379/", NULL, &e), RK_ERR_INVALID_ARGUMENT);
    CHECK_ERROR_MENTIONS("bad Redis URL");
    CHECK(e == NULL);
    CHECK_STATUS(rk_engine_open_redis("not a url", NULL, &e), RK_ERR_INVALID_ARGUMENT);
    CHECK(e == NULL);
    CHECK_STATUS(rk_engine_open_redis(NULL, NULL, &e), RK_ERR_NULL_POINTER);
    CHECK_STATUS(rk_engine_open_redis("redis://127.0.0.1:1/", NULL, NULL), RK_ERR_NULL_POINTER);

    rk_redis_options opts;
    rk_redis_options_init(&opts);
    opts.on_failure = 7;
    CHECK_STATUS(rk_engine_open_redis("redis://127.0.0.1:1/", &opts, &e), RK_ERR_INVALID_ARGUMENT);
    CHECK_ERROR_MENTIONS("opts->on_failure is 7");
    CHECK(e == NULL);

    if (wrong_password_url != NULL) {
        CHECK_STATUS(rk_engine_open_redis(wrong_password_url, NULL, &e), RK_ERR_BACKEND);
        CHECK_ERROR_MENTIONS("authentication failed");
        CHECK(strstr(rk_last_error(), "not-the-password") == NULL); /* never shown */
        CHECK(e == NULL);
    }

    /* Not Redis-backed: no Redis stats. */
    rk_engine *local = NULL;
    CHECK_OK(rk_engine_new(NULL, &local));
    rk_redis_stats s;
    CHECK_STATUS(rk_engine_redis_stats(local, &s), RK_ERR_WRONG_ENGINE_KIND);
    CHECK_STATUS(rk_engine_redis_stats_sized(local, &s, 8), RK_ERR_INVALID_ARGUMENT);
    rk_engine_free(local);
}

/* Nothing listens: the engine opens on its failure policy and decides
 * locally (RK_ON_FAILURE_LOCAL), or denies everything (CLOSED). */
static void an_unreachable_server_is_the_failure_policy(void) {
    rk_redis_options opts;
    rk_redis_options_init(&opts);
    opts.log_switches = false;
    rk_engine *e = NULL;
    CHECK_OK(rk_engine_open_redis("redis://127.0.0.1:1/", &opts, &e));
    if (e != NULL) {
        uint32_t p = 99;
        CHECK_OK(rk_policy_add(e, "p", "1/minute", &p));
        rk_decision d;
        CHECK_OK(rk_check(e, p, KEY("k"), 1, &d));
        CHECK(d.allowed);
        CHECK_OK(rk_check(e, p, KEY("k"), 1, &d));
        CHECK(!d.allowed);
        rk_redis_stats s;
        CHECK_OK(rk_engine_redis_stats(e, &s));
        CHECK(!s.up && s.failovers == 1 && s.round_trips == 0 && s.fallback_decisions == 2);
        rk_engine_free(e);
    }
    opts.on_failure = RK_ON_FAILURE_CLOSED;
    e = NULL;
    CHECK_OK(rk_engine_open_redis("redis://127.0.0.1:1/", &opts, &e));
    if (e != NULL) {
        uint32_t p = 99;
        CHECK_OK(rk_policy_add(e, "p", "1/minute", &p));
        rk_decision d;
        CHECK_OK(rk_check(e, p, KEY("k"), 1, &d));
        CHECK(!d.allowed && d.retry_after_ns > 0);
        rk_engine_free(e);
    }
}

int main(void) {
    const char *url = getenv("RK_TEST_REDIS_URL");
    if (url == NULL || *url == '\0') {
        printf("test_redis: SKIP: RK_TEST_REDIS_URL is not set (tests/c/run.sh starts a redis-server)\n");
        return 0;
    }
    char prefix[64];
    snprintf(prefix, sizeof prefix, "rkctest:%ld:", (long)getpid());
    two_engines_share_one_limit(url, prefix);
    open_errors_are_clear(getenv("RK_TEST_REDIS_WRONG_PASSWORD_URL"));
    an_unreachable_server_is_the_failure_policy();
    return check_report("test_redis");
}
