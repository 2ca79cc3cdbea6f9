#!/usr/bin/env python3
"""Runs a command and reports the peak memory of its whole process tree (the command and every
child it starts, such as DataLoader workers), sampled every 20 ms from /proc:

    python3 Benchmarks/peak_memory.py [--json] -- COMMAND [ARGS...]

peak_pss_mb: the largest sum of the processes' proportional set sizes (shared pages split between
the processes that map them, so forked workers that share their parent's pages are not counted
twice); peak_rss_mb: the largest sum of resident set sizes (shared pages counted in each process).
The command's output passes through; one line with the two numbers follows. Linux only; standard
library only.
"""
import json, os, subprocess, sys, threading, time


def tree(pid):
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def field(pid, path, name):
    try:
        with open(f"/proc/{pid}/{path}") as f:
            for line in f:
                if line.startswith(name):
                    return int(line.split()[1])   # kB
    except OSError:
        pass
    return 0


def main():
    args = sys.argv[1:]
    as_json = False
    if args and args[0] == "--json":
        as_json, args = True, args[1:]
    if args and args[0] == "--":
        args = args[1:]
    p = subprocess.Popen(args)
    peak = {"pss": 0, "rss": 0}
    done = threading.Event()

    def sample():
        while not done.is_set():
            pids = tree(p.pid)
            peak["pss"] = max(peak["pss"], sum(field(q, "smaps_rollup", "Pss:") for q in pids))
            peak["rss"] = max(peak["rss"], sum(field(q, "status", "VmRSS:") for q in pids))
            time.sleep(0.02)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    rc = p.wait()
    done.set()
    th.join()
    r = {"peak_pss_mb": round(peak["pss"] / 1024, 1), "peak_rss_mb": round(peak["rss"] / 1024, 1)}
    print(json.dumps(r) if as_json else f"peak memory of the process tree: PSS {r['peak_pss_mb']} MB, RSS {r['peak_rss_mb']} MB")
    sys.exit(rc)


if __name__ == "__main__":
    main()
