/* ratekeeper from C: 5 login attempts per minute per IP. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <ratekeeper.h>

int main(void) {
    rk_engine *engine;
    uint32_t login;
    if (rk_engine_new(NULL, &engine) != RK_OK ||
        rk_policy_add(engine, "login", "5/minute", &login) != RK_OK) {
        fprintf(stderr, "ratekeeper: %s\n", rk_last_error());
        return 1;
    }
    const char *ip = "ip:203.0.113.7";
    for (int attempt = 1; attempt <= 7; attempt++) {
        rk_decision d;
        rk_check(engine, login, (const uint8_t *)ip, strlen(ip), 1, &d);
        printf("attempt %d: %s, %" PRIu64 " left, retry after %" PRIu64 " s\n", attempt,
               d.allowed ? "allowed" : "denied", d.remaining,
               (d.retry_after_ns + 999999999) / 1000000000);
    }
    /* A mistake: redefining "login" with other limits. */
    rk_status s = rk_policy_add(engine, "login", "10/minute", &login);
    printf("%s\n%s\n", rk_status_str(s), rk_last_error());
    rk_engine_free(engine);
    return 0;
}
