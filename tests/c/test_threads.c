/* One rk_engine* shared by several threads: exact admission under
 * contention (single checks and rk_check_many batches), per-thread error
 * messages, and rk_acquire_timeout woken by a release on another thread. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#include "check.h"

#define S 1000000000ull
#define THREADS 4
#define ATTEMPTS 1000

struct hammer {
    rk_engine *engine;
    uint32_t policy;
    uint64_t now_ns;
    uint64_t allowed;
    uint64_t errors;
};

static void *hammer_one_key(void *arg) {
    struct hammer *h = arg;
    static const uint8_t key[] = "ip:198.51.100.1";
    for (int i = 0; i < ATTEMPTS; i++) {
        rk_decision d;
        if (rk_check_at(h->engine, h->policy, key, sizeof key - 1, 1, h->now_ns, &d) != RK_OK)
            h->errors++;
        else if (d.allowed)
            h->allowed++;
    }
    return NULL;
}

/* 4 threads hammering one key at one fixed instant: exactly the quota passes. */
static void test_exactly_the_quota_is_admitted(rk_engine *engine, const char *spec) {
    uint32_t policy;
    struct hammer h[THREADS];
    pthread_t t[THREADS];
    uint64_t allowed = 0, errors = 0;
    CHECK_OK(rk_policy_add(engine, spec, spec, &policy));
    for (int i = 0; i < THREADS; i++) {
        h[i] = (struct hammer){engine, policy, 7777 * S, 0, 0};
        CHECK(pthread_create(&t[i], NULL, hammer_one_key, &h[i]) == 0);
    }
    for (int i = 0; i < THREADS; i++) {
        CHECK(pthread_join(t[i], NULL) == 0);
        allowed += h[i].allowed;
        errors += h[i].errors;
    }
    if (allowed != 100)
        fprintf(stderr, "%s: %llu admitted\n", spec, (unsigned long long)allowed);
    CHECK(allowed == 100);
    CHECK(errors == 0);
    rk_stats stats;
    CHECK_OK(rk_policy_stats(engine, policy, &stats));
    CHECK(stats.allowed == 100 && stats.denied == THREADS * ATTEMPTS - 100);
}

struct batch_hammer {
    rk_engine *engine;
    rk_check_item items[2];
    uint64_t now_ns;
    uint64_t allowed;
    uint64_t errors;
    uint64_t bad_index;
};

static void *hammer_one_batch(void *arg) {
    struct batch_hammer *h = arg;
    for (int i = 0; i < ATTEMPTS; i++) {
        rk_decision d;
        size_t index = 99;
        if (rk_check_many_at(h->engine, h->items, 2, h->now_ns, &d, &index) != RK_OK)
            h->errors++;
        else if (d.allowed)
            h->allowed++;
        if (index > 1)
            h->bad_index++;
    }
    return NULL;
}

/* 4 threads sending batches of one ip and one route key (the same pair in
 * every thread) at one fixed instant: exactly the smaller quota passes, and
 * the other policy is charged exactly as often (all or nothing). */
static void test_batches_admit_exactly_the_quota(rk_engine *engine, const char *ip_spec,
                                                 const char *route_spec, uint64_t quota,
                                                 uint64_t ip_left, uint64_t route_left) {
    uint32_t ip, route;
    char name[96];
    struct batch_hammer h[THREADS];
    pthread_t t[THREADS];
    uint64_t allowed = 0, errors = 0, bad_index = 0;
    static const uint8_t ip_key[] = "ip:198.51.100.7", route_key[] = "GET /search";
    snprintf(name, sizeof name, "batch ip %s", ip_spec);
    CHECK_OK(rk_policy_add(engine, name, ip_spec, &ip));
    snprintf(name, sizeof name, "batch route %s", route_spec);
    CHECK_OK(rk_policy_add(engine, name, route_spec, &route));
    for (int i = 0; i < THREADS; i++) {
        h[i] = (struct batch_hammer){
            engine,
            {{ip, ip_key, sizeof ip_key - 1, 1}, {route, route_key, sizeof route_key - 1, 1}},
            9999 * S,
            0,
            0,
            0,
        };
        CHECK(pthread_create(&t[i], NULL, hammer_one_batch, &h[i]) == 0);
    }
    for (int i = 0; i < THREADS; i++) {
        CHECK(pthread_join(t[i], NULL) == 0);
        allowed += h[i].allowed;
        errors += h[i].errors;
        bad_index += h[i].bad_index;
    }
    if (allowed != quota)
        fprintf(stderr, "batches %s + %s: %llu admitted\n", ip_spec, route_spec,
                (unsigned long long)allowed);
    CHECK(allowed == quota);
    CHECK(errors == 0 && bad_index == 0);
    /* What is left of each quota (a cost-0 peek charges nothing). */
    rk_decision d;
    CHECK_OK(rk_peek_at(engine, ip, ip_key, sizeof ip_key - 1, 0, 9999 * S, &d));
    CHECK(d.remaining == ip_left);
    CHECK_OK(rk_peek_at(engine, route, route_key, sizeof route_key - 1, 0, 9999 * S, &d));
    CHECK(d.remaining == route_left);
}

struct leases {
    rk_engine *engine;
    uint32_t policy;
    atomic_int *in_flight;
    atomic_int *max_in_flight;
    int acquired;
    int errors;
};

static void *take_and_give_back(void *arg) {
    struct leases *l = arg;
    static const uint8_t key[] = "tenant:42";
    for (int i = 0; i < ATTEMPTS; i++) {
        rk_permit permit;
        rk_decision d;
        if (rk_acquire_at(l->engine, l->policy, key, sizeof key - 1, 100 * S, &permit, &d) != RK_OK) {
            l->errors++;
            continue;
        }
        if (!d.allowed)
            continue;
        int now = atomic_fetch_add(l->in_flight, 1) + 1;
        int max = atomic_load(l->max_in_flight);
        while (now > max && !atomic_compare_exchange_weak(l->max_in_flight, &max, now)) {
        }
        l->acquired++;
        atomic_fetch_sub(l->in_flight, 1);
        if (rk_release(l->engine, &permit) != RK_OK)
            l->errors++;
    }
    return NULL;
}

/* Permits under contention: never more than the limit in flight. */
static void test_permits_never_exceed_the_limit(rk_engine *engine) {
    uint32_t policy;
    atomic_int in_flight = 0, max_in_flight = 0;
    struct leases l[THREADS];
    pthread_t t[THREADS];
    int acquired = 0, errors = 0;
    CHECK_OK(rk_policy_add(engine, "workers", "concurrency 3", &policy));
    for (int i = 0; i < THREADS; i++) {
        l[i] = (struct leases){engine, policy, &in_flight, &max_in_flight, 0, 0};
        CHECK(pthread_create(&t[i], NULL, take_and_give_back, &l[i]) == 0);
    }
    for (int i = 0; i < THREADS; i++) {
        CHECK(pthread_join(t[i], NULL) == 0);
        acquired += l[i].acquired;
        errors += l[i].errors;
    }
    CHECK(errors == 0);
    CHECK(acquired > 0);
    CHECK(atomic_load(&max_in_flight) <= 3);
}

static void *fail_on_this_thread(void *arg) {
    (void)arg;
    rk_decision d;
    const char *before = rk_last_error();
    int ok = strcmp(before, "") == 0;
    ok = ok && rk_check(NULL, 0, NULL, 0, 1, &d) == RK_ERR_NULL_POINTER;
    ok = ok && strstr(rk_last_error(), "`engine` is NULL") != NULL;
    return ok ? (void *)1 : NULL;
}

/* Each thread has its own last error. */
static void test_last_error_is_per_thread(rk_engine *engine) {
    uint32_t p;
    void *result = NULL;
    pthread_t t;
    CHECK_STATUS(rk_policy_find(engine, "no such policy", &p), RK_ERR_UNKNOWN_POLICY);
    CHECK(pthread_create(&t, NULL, fail_on_this_thread, NULL) == 0);
    CHECK(pthread_join(t, &result) == 0);
    CHECK(result == (void *)1);
    CHECK_ERROR_MENTIONS("no policy is named \"no such policy\"");
}

struct waiter {
    rk_engine *engine;
    uint32_t policy;
    rk_status status;
    rk_decision decision;
    rk_permit permit;
    uint64_t waited_ns;
};

static void *wait_for_a_permit(void *arg) {
    struct waiter *w = arg;
    static const uint8_t key[] = "report";
    uint64_t start = rk_now_ns();
    w->status = rk_acquire_timeout(w->engine, w->policy, key, sizeof key - 1, 20 * S, &w->permit,
                                   &w->decision);
    w->waited_ns = rk_now_ns() - start;
    return NULL;
}

/* rk_acquire_timeout sleeps until another thread releases. */
static void test_acquire_timeout_wakes_on_release(rk_engine *engine) {
    uint32_t policy;
    rk_permit held;
    rk_decision d;
    pthread_t t;
    static const uint8_t key[] = "report";
    struct timespec pause = {0, 50 * 1000 * 1000};
    CHECK_OK(rk_policy_add(engine, "reports", "concurrency 1", &policy));
    CHECK_OK(rk_acquire(engine, policy, key, sizeof key - 1, &held, &d));
    CHECK(d.allowed);
    struct waiter w = {engine, policy, RK_ERR_PANIC, {0}, {0}, 0};
    CHECK(pthread_create(&t, NULL, wait_for_a_permit, &w) == 0);
    nanosleep(&pause, NULL);
    CHECK_OK(rk_release(engine, &held));
    CHECK(pthread_join(t, NULL) == 0);
    CHECK_OK(w.status);
    CHECK(w.decision.allowed);
    CHECK(w.waited_ns < 10 * S); /* woken by the release, not by the timeout */
    CHECK_OK(rk_release(engine, &w.permit));
}

int main(void) {
    rk_engine *engine = NULL;
    CHECK_OK(rk_engine_new(NULL, &engine));
    if (engine == NULL)
        return 1;
    test_exactly_the_quota_is_admitted(engine, "100/minute");
    test_exactly_the_quota_is_admitted(engine, "fixed_window 100/minute");
    test_exactly_the_quota_is_admitted(engine, "sliding_window 100/minute");
    test_exactly_the_quota_is_admitted(engine, "sliding_log 100/minute");
    test_exactly_the_quota_is_admitted(engine, "100/minute;fixed_window 1000/hour");
    /* the route binds; the ip binds (and a sliding log is refunded exactly) */
    test_batches_admit_exactly_the_quota(engine, "100/minute", "fixed_window 60/minute", 60, 40, 0);
    test_batches_admit_exactly_the_quota(engine, "sliding_log 50/minute", "1000/hour", 50, 0, 950);
    test_permits_never_exceed_the_limit(engine);
    test_last_error_is_per_thread(engine);
    test_acquire_timeout_wakes_on_release(engine);
    rk_engine_free(engine);
    return check_report("test_threads");
}
