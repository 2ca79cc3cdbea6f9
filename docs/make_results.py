#!/usr/bin/env python3
"""Turns the outputs of docs/study.sh into the table of docs/RESULTS.md and docs/knn_curves.png.

Usage: python3 docs/make_results.py [runs/study]   (needs matplotlib only for the plot)
Prints the markdown table (mean +- std over seeds) on stdout.
"""
import glob, json, os, statistics, sys

STUDY = sys.argv[1] if len(sys.argv) > 1 else "runs/study"
ROWS = [
    ("raw_pixels", "raw pixels (32x32, normalised)"),
    ("random_init", "random-init encoder"),
    ("moco", "MoCo v2"),
    ("moco_random", "MoCo v2 + random masking (hp)"),
    ("moco_sal_hp", "MoCo v2 + saliency masking, hp fill"),
    ("moco_sal_blur", "MoCo v2 + saliency masking, blur fill"),
    ("moco_sal_mean", "MoCo v2 + saliency masking, mean fill"),
    ("simclr", "SimCLR"),
    ("simclr_sal_hp", "SimCLR + saliency masking, hp fill"),
]


def load(path):
    with open(path) as f:
        return json.load(f)


def fmt(values):
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def epochs(run_dir):
    out = []
    log = os.path.join(run_dir, "log.jsonl")
    if os.path.exists(log):
        for line in open(log):
            r = json.loads(line)
            if r.get("type") == "epoch" and "knn_top1" in r:
                out.append((r["epoch"], r["knn_top1"], r.get("img_per_s", 0), r.get("peak_rss_mb", 0)))
    return out


lines = ["| row | kNN top-1 | linear top-1 | seeds | train wall s | train img/s | peak RSS MB |",
         "|---|---:|---:|---:|---:|---:|---:|"]
curves = {}
for key, label in ROWS:
    if key == "raw_pixels":
        knn = [load(p)["top1"] for p in glob.glob(f"{STUDY}/raw_pixels.knn.json")]
        lin = [load(p)["top1"] for p in glob.glob(f"{STUDY}/raw_pixels.linear.json")]
        lines.append(f"| {label} | {fmt(knn)} | {fmt(lin)} | - | - | - | - |")
        continue
    knn = [load(p)["top1"] for p in sorted(glob.glob(f"{STUDY}/{key}.s*.knn.json"))]
    lin = [load(p)["top1"] for p in sorted(glob.glob(f"{STUDY}/{key}.s*.linear.json"))]
    secs = [float(open(p).read()) for p in sorted(glob.glob(f"{STUDY}/{key}.s*.seconds"))]
    ips, rss = [], []
    for d in sorted(glob.glob(f"{STUDY}/{key}.s*")):
        if os.path.isdir(d):
            e = epochs(d)
            if e:
                curves.setdefault(key, []).append(e)
                ips.append(statistics.mean(x[2] for x in e))
                rss.append(max(x[3] for x in e))
    lines.append(f"| {label} | {fmt(knn)} | {fmt(lin)} | {len(knn)} | {fmt(secs) if secs else '-'} | "
                 f"{fmt(ips) if ips else '-'} | {max(rss):.0f} |" if rss else
                 f"| {label} | {fmt(knn)} | {fmt(lin)} | {len(knn)} | - | - | - |")
print("\n".join(lines))

try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    base = [load(p)["top1"] for p in glob.glob(f"{STUDY}/random_init.s*.knn.json")]
    for key, label in ROWS:
        if key not in curves:
            continue
        runs = curves[key]
        n = min(len(r) for r in runs)
        xs = [runs[0][i][0] for i in range(n)]
        ys = [statistics.mean(r[i][1] for r in runs) for i in range(n)]
        ax.plot([0] + xs, [statistics.mean(base) if base else None] + ys, marker="o", label=label)
    ax.set_xlabel("epoch (0 = random initialisation)")
    ax.set_ylabel("kNN top-1 (%), 1,000 test images, mean over seeds")
    ax.set_title("Fashion-MNIST, ResNet-18 (CIFAR stem, width 0.25), 5,000 images")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(os.path.dirname(os.path.abspath(__file__)), "knn_curves.png"))
except ImportError:
    print("(matplotlib not installed: no plot)", file=sys.stderr)
