#!/usr/bin/env python3
"""A model of data-parallel training on N boards, from what Benchmarks/mpi_scaling.sh measured on two.

  python3 Benchmarks/mpi_model.py SCALING.jsonl [--link 1gbit] [--slower 1,4] [--max-boards 32]

Per global batch, with T1 the step of one board (the "1 process x 2 threads" runs), G the time of
the gradient sum between two boards over the link (gradient_sum_alone_s), and L the other
collectives' time per step (batch-norm statistics, gathers: collective_s_per_step of the overlapped
run less what it waited for gradients):

  T(N) = T1 / N + L + max(0, 2 (N - 1) / N * G - h * T1 / N)

2 (N - 1) / N * G is a ring all-reduce's time (each board sends and receives that share of the
gradients); h * T1 / N is the part of a board's step during which sums can travel while backward
runs (h: the backward after the first bucket, about half the step). L comes from the run without
overlap (its collectives less its gradient sum), where no gradient traffic delays the small ones.
The speedup is T1 / T(N); "stops gaining" is the first N after which one more board adds under 5%.
`--slower K` scales T1 by K for boards K times slower than the measuring machine (the link stays
the same), e.g. a Raspberry Pi 4 (4 Cortex-A72 cores, about 48 GFLOP/s of FMA peak) against the
2-core AMD EPYC that measured (about 200). Standard library only.
"""
import argparse
import collections
import json
import statistics


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("jsonl")
    p.add_argument("--link", default="1gbit")
    p.add_argument("--slower", default="1,4", help="comma-separated factors: boards K times slower")
    p.add_argument("--overlap-window", type=float, default=0.5, help="h: fraction of a step that hides sums")
    p.add_argument("--max-boards", type=int, default=32)
    a = p.parse_args()
    runs = collections.defaultdict(list)
    for line in open(a.jsonl):
        r = json.loads(line)
        runs[(r["width"], r["setup"])].append(r)
    med = lambda rs, k: statistics.median(r[k] for r in rs)
    print(f"| width | boards K x slower | T1 s | G s | L s | " +
          " | ".join(f"N={n}" for n in (2, 4, 8, 16, 32) if n <= a.max_boards) + " | stops gaining at |")
    print("|---|---:|---:|---:|---:|" + "---:|" * len([n for n in (2, 4, 8, 16, 32) if n <= a.max_boards]) + "---:|")
    for width in sorted({w for w, _ in runs}):
        one = runs.get((width, "1 process x 2 threads"))
        link = runs.get((width, f"2 ranks x 1 thread, {a.link} link"))
        if not one or not link:
            continue
        t1, g = med(one, "step_s"), med(link, "gradient_sum_alone_s")
        plain = runs.get((width, f"2 ranks x 1 thread, {a.link} link, no overlap")) or link
        other = max(0.0, med(plain, "collective_s_per_step") - med(plain, "gradient_sum_exposed_s"))
        for k in (float(x) for x in a.slower.split(",")):
            T1 = t1 * k
            def step(n):
                if n == 1:
                    return T1
                return T1 / n + other + max(0.0, 2 * (n - 1) / n * g - a.overlap_window * T1 / n)
            speed = {n: T1 / step(n) for n in range(1, a.max_boards + 1)}
            best = next((n for n in range(1, a.max_boards) if speed[n + 1] < 1.05 * speed[n]), a.max_boards)
            cols = " | ".join(f"{speed[n]:.2f}x" for n in (2, 4, 8, 16, 32) if n <= a.max_boards)
            where = f"{best} boards ({speed[best]:.2f}x)" if best > 1 else "1 board: more never gain"
            print(f"| {width} | {k:g} | {T1:.3f} | {g:.3f} | {other:.3f} | {cols} | {where} |")


if __name__ == "__main__":
    main()
