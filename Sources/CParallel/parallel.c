#include "cparallel.h"
#include <stdlib.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static int g_threads = 0;

int sal_num_procs(void) {
#ifdef _OPENMP
    return omp_get_num_procs();
#else
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
#endif
}

int sal_has_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int sal_get_threads(void) {
    if (g_threads <= 0) {
        const char *e = getenv("SALIENT_THREADS");
        int n = e ? atoi(e) : 0;
        g_threads = n > 0 ? n : sal_num_procs();
    }
    return g_threads;
}

void sal_set_threads(int n) { g_threads = n > 0 ? n : sal_num_procs(); }

void sal_parallel_for(long n, void *ctx, sal_range_fn fn) {
    if (n <= 0) return;
    int nt = sal_get_threads();
#ifdef _OPENMP
    if (nt > n) nt = (int)n;
    if (nt <= 1 || omp_in_parallel()) { fn(ctx, 0, n, 0); return; }
    #pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num();
        int T = omp_get_num_threads();
        long lo = n * t / T, hi = n * (t + 1) / T;
        if (lo < hi) fn(ctx, lo, hi, t);
    }
#else
    (void)nt;
    fn(ctx, 0, n, 0);
#endif
}

void sal_parallel_for_dynamic(long n, long chunk, void *ctx, sal_range_fn fn) {
    if (n <= 0) return;
    if (chunk < 1) chunk = 1;
    long chunks = (n + chunk - 1) / chunk;
    int nt = sal_get_threads();
#ifdef _OPENMP
    if (nt > chunks) nt = (int)chunks;
    if (nt <= 1 || omp_in_parallel()) { fn(ctx, 0, n, 0); return; }
    // A shared counter rather than `omp for schedule(dynamic)`: the latter makes newer clangs call
    // runtime entry points (__kmpc_dispatch_deinit) that older libomp builds lack.
    long next = 0;
    #pragma omp parallel num_threads(nt) shared(next)
    {
        int t = omp_get_thread_num();
        for (;;) {
            long i = __atomic_fetch_add(&next, 1, __ATOMIC_RELAXED);
            if (i >= chunks) break;
            long lo = i * chunk, hi = lo + chunk < n ? lo + chunk : n;
            fn(ctx, lo, hi, t);
        }
    }
#else
    (void)nt; (void)chunks;
    fn(ctx, 0, n, 0);
#endif
}
