/* A shared engine from C: 4 processes open the same file and hammer one key
 * of a "100/minute" policy at one fixed instant; together they admit exactly
 * 100. Also: a policy added by one process is found by name in another. */
#include <stdint.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"

#define S 1000000000ull
#define PROCESSES 4
#define ATTEMPTS 500

static int child(const char *path, int out_fd) {
    rk_engine *engine = NULL;
    uint32_t policy, admitted = 0;
    static const uint8_t key[] = "ip:192.0.2.10";
    if (rk_engine_open_shared(path, NULL, &engine) != RK_OK ||
        rk_policy_add(engine, "api", "100/minute", &policy) != RK_OK) {
        fprintf(stderr, "child: %s\n", rk_last_error());
        return 1;
    }
    for (int i = 0; i < ATTEMPTS; i++) {
        rk_decision d;
        if (rk_check_at(engine, policy, key, sizeof key - 1, 1, 4242 * S, &d) != RK_OK)
            return 1;
        admitted += d.allowed;
    }
    rk_engine_free(engine);
    return write(out_fd, &admitted, sizeof admitted) == (ssize_t)sizeof admitted ? 0 : 1;
}

int main(void) {
    char path[] = "/tmp/rk-shared-XXXXXX";
    int fd = mkstemp(path);
    int fds[2];
    CHECK(fd >= 0);
    if (fd < 0)
        return 1;
    close(fd);
    unlink(path); /* let the engine create it */
    CHECK(pipe(fds) == 0);

    pid_t pids[PROCESSES];
    for (int i = 0; i < PROCESSES; i++) {
        pids[i] = fork();
        CHECK(pids[i] >= 0);
        if (pids[i] == 0) {
            close(fds[0]);
            _exit(child(path, fds[1]));
        }
    }
    close(fds[1]);
    uint32_t total = 0, n;
    int reports = 0;
    while (read(fds[0], &n, sizeof n) == (ssize_t)sizeof n) {
        total += n;
        reports++;
    }
    close(fds[0]);
    for (int i = 0; i < PROCESSES; i++) {
        int status = 0;
        CHECK(waitpid(pids[i], &status, 0) == pids[i]);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    CHECK(reports == PROCESSES);
    if (total != 100)
        fprintf(stderr, "test_shared: %u admitted\n", (unsigned)total);
    CHECK(total == 100);

    /* Another process (this one) sees the policy and its state. */
    rk_engine *engine = NULL;
    uint32_t policy;
    rk_stats stats;
    rk_decision d;
    CHECK_OK(rk_engine_open_shared(path, NULL, &engine));
    if (engine != NULL) {
        CHECK_OK(rk_policy_find(engine, "api", &policy));
        CHECK_OK(rk_check_at(engine, policy, (const uint8_t *)"ip:192.0.2.10", 13, 1, 4242 * S, &d));
        CHECK(!d.allowed && d.retry_after_ns == 600000000ull);
        CHECK_OK(rk_policy_stats(engine, policy, &stats));
        CHECK(stats.allowed == 100);
        CHECK_STATUS(rk_policy_add(engine, "api", "200/minute", &policy), RK_ERR_POLICY_MISMATCH);
        rk_engine_free(engine);
    }
    unlink(path);
    return check_report("test_shared");
}
