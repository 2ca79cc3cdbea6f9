#!/usr/bin/env python3
"""Aggregates the JSONL that compare.sh collected into one markdown report (medians over rounds).

  summarize.py DIR [--out FILE]

DIR holds salient.jsonl and pytorch.jsonl (one JSON object per line, all rounds appended),
and optionally meta.txt (key: value lines), commands.txt and notes.txt. Standard library only.
With --out, the report goes between the markers
  <!-- bench-compare:begin --> ... <!-- bench-compare:end -->
of FILE (created if missing; appended if it has no markers), so the rest of the file is kept.
"""
import argparse
import json
import os
import statistics
import sys

BEGIN, END = "<!-- bench-compare:begin -->", "<!-- bench-compare:end -->"
CONV_OPS = ["conv3x3_fwd", "conv3x3_bwd_data", "conv3x3_bwd_weight"]


def load(path):
    recs = []
    if not os.path.exists(path):
        return recs
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return recs


def med(values):
    values = [v for v in values if isinstance(v, (int, float))]
    return statistics.median(values) if values else None


def group(recs, key):
    out = {}
    for r in recs:
        out.setdefault(key(r), []).append(r)
    return out


def fmt(v, digits=1):
    return "—" if v is None else f"{v:.{digits}f}"


def ratio(a, b, digits=2):
    return "—" if a is None or b is None or b == 0 else f"{a / b:.{digits}f}x"


def table(header, rows, text_cols=1):
    """Markdown table; the first `text_cols` columns left-aligned, the rest (numbers) right-aligned."""
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i < text_cols else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def read_kv(path):
    kv = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if ":" in line:
                    k, v = line.rstrip("\n").split(":", 1)
                    kv.append((k.strip(), v.strip()))
    return kv


def report(d):
    sal, pt = load(os.path.join(d, "salient.jsonl")), load(os.path.join(d, "pytorch.jsonl"))
    meta = dict(read_kv(os.path.join(d, "meta.txt")))
    out = ["## salient beside PyTorch", ""]
    threads = meta.get("threads", "?")
    rounds = meta.get("rounds", "?")
    out.append(f"Medians over {rounds} alternating round(s), {threads} thread(s) for both, same machine and shapes. "
               "Throughput ratios are salient / PyTorch (above 1x: salient is faster); memory ratios likewise "
               "(below 1x: salient uses less).")
    out.append("")

    # ---- machine
    out.append("### Machine")
    out.append("")
    for k, v in read_kv(os.path.join(d, "meta.txt")):
        out.append(f"- {k}: {v}")
    out.append("")

    # ---- kernels
    peak = med([r.get("gflops") for r in sal if r.get("op") == "peak_fma"])
    conv_s = group([r for r in sal if r.get("op") in CONV_OPS and r.get("conv", "direct") != "direct"],
                   lambda r: (r["op"], r["C"], r["HW"], r["batch"]))
    conv_d = group([r for r in sal if r.get("op") in CONV_OPS and r.get("conv", "direct") == "direct"],
                   lambda r: (r["op"], r["C"], r["HW"], r["batch"]))
    if not conv_s:   # a build without Winograd: its direct kernels are the default
        conv_s, conv_d = conv_d, {}
    conv_p = group([r for r in pt if r.get("op") in CONV_OPS],
                   lambda r: (r["op"], r["C"], r["HW"], r["batch"], r.get("layout", "nchw")))
    if conv_s or conv_p:
        out.append("### 3x3 convolutions (stride 1, pad 1, C in = C out), GFLOP/s")
        out.append("")
        if peak is not None:
            out.append(f"FP32 FMA peak measured by `salient bench kernels` in the same runs: **{peak:.1f} GFLOP/s** "
                       f"on {threads} thread(s); `% peak` is against it (for PyTorch too). "
                       "The reference PyTorch number is the faster of its two memory formats. GFLOP/s count the "
                       "direct convolution's 2·N·H·W·K·C·9 FLOPs for every column, so an algorithm that does less "
                       "arithmetic can pass 100%: salient's default is Winograd F(4x4,3x3) (1/4 of the multiplies, "
                       "weight transform included in the time), PyTorch's oneDNN skips the taps in the zero padding. "
                       "`salient direct` is salient's gather-GEMM kernel on the same shapes (`--conv direct`).")
            out.append("")
        keys = sorted({k for k in conv_s} | {k[:4] for k in conv_p},
                      key=lambda k: (-k[2], CONV_OPS.index(k[0]), k[1], k[3]))
        rows = []
        for k in keys:
            s = med([r["gflops"] for r in conv_s.get(k, [])])
            nchw = med([r["gflops"] for r in conv_p.get(k + ("nchw",), [])])
            cl = med([r["gflops"] for r in conv_p.get(k + ("channels_last",), [])])
            best = max([v for v in (nchw, cl) if v is not None], default=None)
            pct = (lambda v: "—" if v is None or not peak else f"{100 * v / peak:.0f}%")
            dv = med([r["gflops"] for r in conv_d.get(k, [])])
            rows.append([k[0], k[1], k[2], k[3], fmt(s), pct(s), fmt(dv), pct(dv), fmt(nchw), fmt(cl), pct(best),
                         ratio(s, best)])
        over = peak and any(r.get("gflops", 0) > peak for rs in list(conv_d.values()) for r in rs)
        if over:
            out.append("Note: some convolutions beat the measured peak, so the peak run was disturbed (other work on "
                       "the machine); rerun on an idle machine before quoting `% peak`.")
            out.append("")
        out.append(table(["op", "C", "HW", "batch", "salient", "salient % peak", "salient direct", "direct % peak",
                          "PyTorch NCHW", "PyTorch channels_last", "PyTorch % peak", "salient / PyTorch"], rows))
        out.append("")
        mem = group([r for r in sal if "gbps" in r], lambda r: (r["op"], r.get("C"), r.get("HW"), r.get("batch")))
        if mem:
            out.append("Memory-bound layers (salient only, GB/s): " + ", ".join(
                f"`{k[0]}` {fmt(med([r['gbps'] for r in v]))}" for k, v in sorted(mem.items(), key=lambda kv: kv[0][0]))
                + f" (C {next(iter(mem))[1]}, {next(iter(mem))[2]}x{next(iter(mem))[2]}, batch {next(iter(mem))[3]}).")
            out.append("")

    # ---- training step and extraction: PyTorch in both memory formats, the faster one is the reference
    def best_layout(recs):
        """{layout: [records]} -> (median img/s per layout, records of the faster layout)."""
        by = group(recs, lambda r: r.get("layout", "nchw"))
        speed = {lay: med([r["img_per_s"] for r in rs]) for lay, rs in by.items()}
        best = max(speed, key=lambda lay: speed[lay] or 0) if speed else None
        return speed, (by[best] if best else [])

    def step_key(r):
        return (r["op"], r.get("arch"), r.get("stem"), r.get("batch"), r.get("res"), r.get("masking", "saliency"))
    st_s = group([r for r in sal if r.get("op") in ("moco_step", "simclr_step")], step_key)
    st_p = group([r for r in pt if r.get("op") in ("moco_step", "simclr_step")], step_key)
    if st_s or st_p:
        out.append("### One training step (MoCo v2; `saliency` = + saliency forward, masks, one hard negative)")
        out.append("")
        out.append("PyTorch runs in both memory formats; its faster one is the reference for the ratios, "
                   "its step time and its memory.")
        out.append("")
        rows = []
        for k in sorted(set(st_s) | set(st_p), key=lambda k: (k[0], k[5] == "none")):
            s = st_s.get(k, [])
            speed, p = best_layout(st_p.get(k, []))
            si, pi = med([r["img_per_s"] for r in s]), med([r["img_per_s"] for r in p])
            ss, ps = med([r["step_s"] for r in s]), med([r["step_s"] for r in p])
            sm, pm = med([r["peak_rss_mb"] for r in s]), med([r["peak_rss_mb"] for r in p])
            rows.append([k[0], f"{k[1]} {k[2]}, batch {k[3]}, {k[4]} px", k[5], fmt(si), fmt(speed.get("nchw")),
                         fmt(speed.get("channels_last")), ratio(si, pi), fmt(ss, 3), fmt(ps, 3), fmt(sm, 0),
                         fmt(pm, 0), ratio(sm, pm)])
        out.append(table(["step", "model", "masking", "salient img/s", "PyTorch NCHW img/s",
                          "PyTorch channels_last img/s", "salient / PyTorch", "salient s/step", "PyTorch s/step",
                          "salient peak RSS MB", "PyTorch peak RSS MB", "RSS salient / PyTorch"], rows, text_cols=3))
        out.append("")
        # The rounds themselves: on a shared machine other work only ever slows a run down, so the
        # spread (and the best round of each) says how much of a median is the machine.
        for k in sorted(set(st_s) & set(st_p), key=lambda k: (k[0], k[5] == "none")):
            s = [r["img_per_s"] for r in st_s[k]]
            _, p = best_layout(st_p[k])
            p = [r["img_per_s"] for r in p]
            if len(s) > 1 and p:
                out.append(f"Rounds of `{k[0]}` ({k[5]}), img/s in order: salient {' / '.join(fmt(v) for v in s)}; "
                           f"PyTorch {' / '.join(fmt(v) for v in p)}. Best round of each: {fmt(max(s))} vs "
                           f"{fmt(max(p))} = {ratio(max(s), max(p))}.")
                out.append("")

    ex_key = (lambda r: (r.get("arch"), r.get("stem"), r.get("batch"), r.get("res")))
    ex_s = group([r for r in sal if r.get("op") == "extract"], ex_key)
    ex_p = group([r for r in pt if r.get("op") == "extract"], ex_key)
    if ex_s or ex_p:
        out.append("### Feature extraction (eval mode, no grad, pooled backbone features)")
        out.append("")
        rows = []
        for k in sorted(set(ex_s) | set(ex_p), key=lambda k: tuple(str(v) for v in k)):
            s = ex_s.get(k, [])
            speed, p = best_layout(ex_p.get(k, []))
            si, pi = med([r["img_per_s"] for r in s]), med([r["img_per_s"] for r in p])
            rows.append([f"{k[0]} {k[1]}, batch {k[2]}, {k[3]} px", fmt(si), fmt(speed.get("nchw")),
                         fmt(speed.get("channels_last")), ratio(si, pi),
                         fmt(med([r.get("peak_rss_mb") for r in s]), 0), fmt(med([r.get("peak_rss_mb") for r in p]), 0)])
        out.append(table(["model", "salient img/s", "PyTorch NCHW img/s", "PyTorch channels_last img/s",
                          "salient / PyTorch", "salient peak RSS MB", "PyTorch peak RSS MB"], rows))
        out.append("")
    notes = os.path.join(d, "notes.txt")
    if os.path.exists(notes) and os.path.getsize(notes):
        out.append("### Not measured")
        out.append("")
        with open(notes) as f:
            out += [f"- {line.strip()}" for line in f if line.strip()]
        out.append("")

    cmds = os.path.join(d, "commands.txt")
    if os.path.exists(cmds):
        out.append("### Commands (each run once per round, salient and PyTorch alternating)")
        out.append("")
        out.append("```")
        with open(cmds) as f:
            out += [line.rstrip("\n") for line in f if line.strip()]
        out.append("```")
        out.append("")
    return "\n".join(out)


def write_section(path, text):
    section = f"{BEGIN}\n{text.rstrip()}\n{END}\n"
    old = open(path).read() if os.path.exists(path) else None
    if old is None:
        new = section
    elif BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        new = head + section + tail
    else:
        new = old.rstrip("\n") + "\n\n" + section
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(new)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir")
    p.add_argument("--out", help="markdown file to write the report into (between bench-compare markers)")
    a = p.parse_args()
    text = report(a.dir)
    print(text)
    if a.out:
        write_section(a.out, text)
        print(f"(written to {a.out})", file=sys.stderr)


if __name__ == "__main__":
    main()
