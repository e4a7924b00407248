/* A tiny assertion kit for the C tests: every failed CHECK prints where and
 * why, the test keeps going, and the program exits 1 if anything failed. */
#ifndef RK_TEST_CHECK_H
#define RK_TEST_CHECK_H

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "ratekeeper.h"

static int check_failures = 0;
static int check_count = 0;

#define CHECK(cond)                                                              \
    do {                                                                         \
        check_count++;                                                           \
        if (!(cond)) {                                                           \
            check_failures++;                                                    \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                        \
    } while (0)

/* Checks that `call` returns `expected`; prints both and the last error if not. */
#define CHECK_STATUS(call, expected)                                             \
    do {                                                                         \
        rk_status check_s_ = (call);                                             \
        check_count++;                                                           \
        if (check_s_ != (expected)) {                                            \
            check_failures++;                                                    \
            fprintf(stderr, "%s:%d: %s\n  returned %s\n  expected %s\n  last error: %s\n", \
                    __FILE__, __LINE__, #call, rk_status_str(check_s_),          \
                    rk_status_str(expected), rk_last_error());                   \
        }                                                                        \
    } while (0)

#define CHECK_OK(call) CHECK_STATUS(call, RK_OK)

/* Checks that the thread's last error contains `needle`. */
#define CHECK_ERROR_MENTIONS(needle)                                             \
    do {                                                                         \
        check_count++;                                                           \
        if (strstr(rk_last_error(), (needle)) == NULL) {                         \
            check_failures++;                                                    \
            fprintf(stderr, "%s:%d: last error does not mention \"%s\": \"%s\"\n", \
                    __FILE__, __LINE__, (needle), rk_last_error());              \
        }                                                                        \
    } while (0)

static int check_report(const char *name) {
    if (check_failures == 0) {
        printf("%s: all %d checks passed\n", name, check_count);
        return 0;
    }
    printf("%s: %d of %d checks FAILED\n", name, check_failures, check_count);
    return 1;
}

#endif /* RK_TEST_CHECK_H */
