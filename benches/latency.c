/* The host's latency to memory, for benches/REPORT.md ("What bounds the
 * missed targets"): a dependent chain of loads through one random cyclic
 * permutation of the 64-byte lines of a MiB-sized region (huge pages
 * advised, as ratekeeper's tables are), so that every load is a miss its
 * successor waits for; then as many independent random loads, which the
 * core overlaps.
 *
 *   gcc -O2 benches/latency.c -o /tmp/latency && /tmp/latency 34
 *
 * (34 MiB: the packed table of the 1M-key benchmark, 2^21 slots.) */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

/* xorshift64: the permutation and the independent loads' lines. */
static uint64_t next(uint64_t *x) {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

int main(int argc, char **argv) {
    long mib = argc > 1 ? atol(argv[1]) : 0;
    if (mib < 1 || mib > 65536) {
        fprintf(stderr, "usage: %s MIB (1..65536)\n", argv[0]);
        return 2;
    }
    const size_t huge = 2u << 20, bytes = (size_t)mib << 20, lines = bytes / 64;
    char *raw = mmap(NULL, bytes + huge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    size_t *perm = malloc(lines * sizeof *perm);
    if (raw == MAP_FAILED || perm == NULL) {
        perror("latency");
        return 1;
    }
    char *m = (char *)(((uintptr_t)raw + huge - 1) & ~(uintptr_t)(huge - 1));
    madvise(m, bytes, MADV_HUGEPAGE);
    uint64_t x = 88172645463325252ull;
    for (size_t i = 0; i < lines; i++) perm[i] = i;
    for (size_t i = lines - 1; i > 0; i--) { /* Fisher-Yates */
        size_t j = next(&x) % (i + 1), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    for (size_t i = 0; i < lines; i++) *(size_t *)(m + perm[i] * 64) = perm[(i + 1) % lines] * 64;
    free(perm);

    const long loads = 5000000;
    size_t p = 0;
    double t0 = now_ns();
    for (long i = 0; i < loads; i++) p = *(volatile size_t *)(m + p);
    double chain = (now_ns() - t0) / loads;
    size_t sum = 0;
    t0 = now_ns();
    for (long i = 0; i < loads; i++) sum += *(volatile size_t *)(m + (next(&x) % lines) * 64);
    double independent = (now_ns() - t0) / loads;
    printf("%ld MiB: dependent load %.1f ns, independent load %.1f ns (%zu)\n", mib, chain, independent,
           (p ^ sum) & 1);
    return 0;
}
