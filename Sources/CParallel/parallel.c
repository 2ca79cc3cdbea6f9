#include "cparallel.h"
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static int g_threads = 0;

/* One line of a sysfs cache attribute, or 0 when the file is missing. */
static int read_cache_attr(int index, const char *name, char *buf, int len) {
    char path[96];
    snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/%s", index, name);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    int ok = fgets(buf, len, f) != NULL;
    fclose(f);
    return ok;
}

void sal_cache_sizes(long *l2, long *last_level) {
    static int done = 0;
    static long cached_l2 = 0, cached_last = 0;
    if (!done) {
        int top = 0;
        for (int i = 0; i < 16; i++) {
            char level[16], type[32], size[32];
            if (!read_cache_attr(i, "level", level, sizeof level)) continue;
            if (!read_cache_attr(i, "type", type, sizeof type) || type[0] == 'I') continue;
            if (!read_cache_attr(i, "size", size, sizeof size)) continue;
            char *end = NULL;
            long bytes = strtol(size, &end, 10);
            if (bytes <= 0) continue;
            if (*end == 'K' || *end == 'k') bytes <<= 10;
            else if (*end == 'M' || *end == 'm') bytes <<= 20;
            else if (*end == 'G' || *end == 'g') bytes <<= 30;
            int lv = atoi(level);
            if (lv == 2 && bytes > cached_l2) cached_l2 = bytes;
            if (lv > top || (lv == top && bytes > cached_last)) { top = lv; cached_last = bytes; }
        }
        done = 1;
    }
    *l2 = cached_l2;
    *last_level = cached_last;
}

int sal_num_procs(void) {
#ifdef _OPENMP
    return omp_get_num_procs();
#else
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
#endif
}

int sal_cpu_supports_build(void) {
#if defined(SALIENT_AVX512) && (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
#else
    return 1;
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

// The schedule model (sal_schedule_model_begin): every region runs on the calling thread, range by
// range, each timed; a region's modelled time is when the last of its threads would finish, the
// static split's ranges and the dynamic counter's chunks handed out exactly as nt threads would.
#define SAL_MODEL_MAX 1024
static int g_model = 0;
static double g_model_serial = 0, g_model_parallel = 0;
static long g_model_regions = 0;
static int g_model_inside = 0;  // a loop inside a modelled loop's range runs serially, as in a real region
// Where the model loses time: per loop shape (n, chunk, threads), the seconds its slowest thread
// runs past an even share, printed by sal_schedule_model_end when asked to.
#define SAL_MODEL_SHAPES 256
static struct { long n, chunk; int nt; long count; double serial, lost; } g_model_shapes[SAL_MODEL_SHAPES];
static int g_model_shape_count = 0;

static void sal_model_note(long n, long chunk, int nt, double serial, double most) {
    int i = 0;
    while (i < g_model_shape_count && !(g_model_shapes[i].n == n && g_model_shapes[i].chunk == chunk
                                        && g_model_shapes[i].nt == nt)) i++;
    if (i == SAL_MODEL_SHAPES) return;
    if (i == g_model_shape_count) {
        g_model_shape_count++;
        g_model_shapes[i].n = n; g_model_shapes[i].chunk = chunk; g_model_shapes[i].nt = nt;
        g_model_shapes[i].count = 0; g_model_shapes[i].serial = 0; g_model_shapes[i].lost = 0;
    }
    g_model_shapes[i].count++;
    g_model_shapes[i].serial += serial;
    g_model_shapes[i].lost += most - serial / nt;
}

static double sal_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void sal_schedule_model_begin(int threads) {
    sal_set_threads(threads > SAL_MODEL_MAX ? SAL_MODEL_MAX : threads);
    g_model = 1;
    g_model_serial = g_model_parallel = 0;
    g_model_regions = 0;
    g_model_shape_count = 0;
}

void sal_schedule_model_end(double *serial, double *parallel, long *regions, int print_losses) {
    g_model = 0;
    *serial = g_model_serial;
    *parallel = g_model_parallel;
    *regions = g_model_regions;
    if (print_losses) {
        for (int k = 0; k < 25; k++) {
            int best = -1;
            for (int i = 0; i < g_model_shape_count; i++)
                if (g_model_shapes[i].count > 0 && (best < 0 || g_model_shapes[i].lost > g_model_shapes[best].lost)) best = i;
            if (best < 0) break;
            fprintf(stderr, "loop n %ld chunk %ld (0: static) on %d threads: %ld runs, %.1f ms in all, %.1f ms past an even share\n",
                    g_model_shapes[best].n, g_model_shapes[best].chunk, g_model_shapes[best].nt, g_model_shapes[best].count,
                    1e3 * g_model_shapes[best].serial, 1e3 * g_model_shapes[best].lost);
            g_model_shapes[best].count = 0;
        }
    }
}

// Runs chunks [i * chunk, ...) of [0, n) on the calling thread as nt threads would take them: static
// (chunk 0): thread t gets [n t / nt, n (t + 1) / nt); dynamic: each next chunk goes to the thread
// that is free first (the lowest index on ties).
static void sal_model_region(long n, long chunk, int nt, void *ctx, sal_range_fn fn) {
    if (g_model_inside) { fn(ctx, 0, n, 0); return; }
    g_model_inside = 1;
    double busy[SAL_MODEL_MAX];
    for (int t = 0; t < nt; t++) busy[t] = 0;
    double total = 0;
    if (chunk == 0) {
        for (int t = 0; t < nt; t++) {
            long lo = n * t / nt, hi = n * (t + 1) / nt;
            if (lo >= hi) continue;
            double t0 = sal_now();
            fn(ctx, lo, hi, t);
            busy[t] = sal_now() - t0;
            total += busy[t];
        }
    } else {
        for (long lo = 0; lo < n; lo += chunk) {
            int w = 0;
            for (int t = 1; t < nt; t++) if (busy[t] < busy[w]) w = t;
            long hi = lo + chunk < n ? lo + chunk : n;
            double t0 = sal_now();
            fn(ctx, lo, hi, w);
            double d = sal_now() - t0;
            busy[w] += d;
            total += d;
        }
    }
    double most = 0;
    for (int t = 0; t < nt; t++) if (busy[t] > most) most = busy[t];
    g_model_serial += total;
    g_model_parallel += most;
    sal_model_note(n, chunk, nt, total, most);
    g_model_regions += 1;
    g_model_inside = 0;
}

void sal_parallel_for(long n, void *ctx, sal_range_fn fn) {
    if (n <= 0) return;
    int nt = sal_get_threads();
    if (g_model) { if (nt > n) nt = (int)n; sal_model_region(n, 0, nt, ctx, fn); return; }
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
    if (g_model) { if (nt > chunks) nt = (int)chunks; sal_model_region(n, chunk, nt, ctx, fn); return; }
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
