// CParallel: a parallel-for over OpenMP for salient's Swift kernels.
// Internal to salient; no stable API. Built without OpenMP, every loop runs serially.
#ifndef SALIENT_CPARALLEL_H
#define SALIENT_CPARALLEL_H

#ifdef __cplusplus
extern "C" {
#endif

/// Called once per thread with a contiguous range [begin, end) of the iteration space.
typedef void (*sal_range_fn)(void *ctx, long begin, long end, int thread);

/// Splits [0, n) into at most sal_get_threads() contiguous chunks and runs fn on each in parallel.
/// Runs serially when n < 2, when one thread is configured, or when already inside a parallel region.
void sal_parallel_for(long n, void *ctx, sal_range_fn fn);

/// The same over chunks of `chunk` iterations, each taken by the next free thread (a shared
/// counter): fn may run several times per thread, each with the thread's index. For loops whose
/// results do not depend on which thread runs which chunk.
void sal_parallel_for_dynamic(long n, long chunk, void *ctx, sal_range_fn fn);

/// Threads used by sal_parallel_for. Default: SALIENT_THREADS if set, else all cores.
int sal_get_threads(void);
void sal_set_threads(int n);
/// Logical processors available to this process.
int sal_num_procs(void);

/// The data caches of cpu0 from Linux sysfs (/sys/devices/system/cpu/cpu0/cache/index*): the largest
/// level-2 data/unified cache and the largest cache of the highest level, in bytes; 0 for what the
/// system does not report. Read once; later calls return the first answer.
void sal_cache_sizes(long *l2, long *last_level);
/// 1 when built with OpenMP.
int sal_has_openmp(void);

/// 1 when this CPU runs every instruction the binary was built for (AVX-512 builds need
/// avx512f/vl/bw/dq; others: always 1).
int sal_cpu_supports_build(void);

/// Schedule model: from _begin(N) to _end, parallel loops plan for N threads but run on the calling
/// thread, each range timed, and _end returns the seconds spent in parallel loops, the seconds they
/// would take on N threads that each run as fast as this one (the last thread's finish per loop), and
/// the number of loops. What it leaves out: memory bandwidth, clocks, synchronisation. With
/// print_losses, _end also lists on stderr the loops that lose most to an uneven split.
void sal_schedule_model_begin(int threads);
void sal_schedule_model_end(double *serial, double *parallel, long *regions, int print_losses);

/// dst[m * 16 + j] = src[j * rowStride + m] for the 16 rows j and columns m < cols: a 16 x cols block
/// (rows rowStride floats apart) transposed into cols contiguous rows of 16 (transpose.c).
void sal_transpose16(const float *src, long rowStride, long cols, float *dst);

/// A hint to fetch the cache line holding p for reading (no fault if p is not mapped; a no-op on
/// compilers without the builtin). Inlined into Swift callers.
static inline void sal_prefetch(const void *p) {
#if defined(__GNUC__) || defined(__clang__)
    __builtin_prefetch(p, 0, 3);
#else
    (void)p;
#endif
}

#ifdef __cplusplus
}
#endif
#endif
