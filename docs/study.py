#!/usr/bin/env python3
"""The learning-quality study behind docs/RESULTS.md: one run per call, a JSON record per run,
tables and curves made from the records.

  python3 docs/study.py rows                          the studies, their rows and exact options
  python3 docs/study.py run STUDY ROW SEED [--bin B]  train, then kNN and linear probe -> a record
  python3 docs/study.py baselines STUDY SEED [--bin B]  raw pixels (seed-free) and the random-init encoder
  python3 docs/study.py table [--write] [--plot]      markdown tables of every study (--write: into
                                                      docs/RESULTS.md); --plot writes docs/knn_curves.png

A run trains into runs/study/STUDY/ROW.sSEED/ (not committed) and writes its record to
docs/results/STUDY/ROW.sSEED.json: the exact commands, the commit the binary was built from, the
machine, the seed, kNN top-1 after every epoch, the final kNN and linear top-1, wall time, images/s
and peak resident memory. A run that was killed continues where its last checkpoint left it when
called again (train --resume: the run is deterministic for a thread count). Only the standard
library is needed, and matplotlib for --plot.

The commit: --commit C, or read from a file B.commit beside the binary, or `git rev-parse HEAD`.
Build the study's binary once and copy it aside (with its .commit) so that later work on the tree
does not change a study half-way.
"""
import argparse
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FM = "/usr/share/datasets/fashion-mnist"
CLUTTER = os.path.join(ROOT, "runs", "data", "clutter")

# The encoder and schedule every row of a study shares; rows add the method options.
MODEL = "--arch resnet18 --stem cifar --width 0.25"

STUDIES = {
    "fmnist": {
        "title": "Fashion-MNIST, all 60,000 training images, 32 px",
        "train": f"{FM}/train-images-idx3-ubyte.gz",
        "test": f"{FM}/t10k-images-idx3-ubyte.gz",
        "res": 32,
        "budget": "--epochs 3 --batch 128",
    },
    "clutter": {
        "title": "Cluttered Fashion-MNIST (garments on textured backgrounds), 60,000 images, 48 px",
        "train": f"{CLUTTER}/train-images-idx3-ubyte.gz",
        "test": f"{CLUTTER}/t10k-images-idx3-ubyte.gz",
        "res": 48,
        "budget": "--epochs 3 --batch 128",
    },
}

SIMCLR = "--method simclr --temperature 0.5 --lr 0.06"
MOCO = "--method moco --temperature 0.2 --lr 0.06 --queue 4096 --moco-m 0.99"
SAL = "--masking saliency --hard-negatives 1 --alpha 1"
ROWS = {
    "simclr": ("SimCLR", f"{SIMCLR} --masking none"),
    "simclr_random_mean": ("SimCLR + random masking, mean fill", f"{SIMCLR} --masking random --fill mean --hard-negatives 1 --alpha 1"),
    "simclr_sal_hp": ("SimCLR + saliency masking, hp fill", f"{SIMCLR} {SAL} --fill hp"),
    "simclr_sal_blur": ("SimCLR + saliency masking, blur fill", f"{SIMCLR} {SAL} --fill blur"),
    "simclr_sal_mean": ("SimCLR + saliency masking, mean fill", f"{SIMCLR} {SAL} --fill mean"),
    "moco": ("MoCo v2", f"{MOCO} --masking none"),
    "moco_random_mean": ("MoCo v2 + random masking, mean fill", f"{MOCO} --masking random --fill mean --hard-negatives 1 --alpha 1"),
    "moco_sal_hp": ("MoCo v2 + saliency masking, hp fill", f"{MOCO} {SAL} --fill hp"),
    "moco_sal_blur": ("MoCo v2 + saliency masking, blur fill", f"{MOCO} {SAL} --fill blur"),
    "moco_sal_mean": ("MoCo v2 + saliency masking, mean fill", f"{MOCO} {SAL} --fill mean"),
}


# The variant name of a run timed back to back with the PyTorch reference (same options as its row).
PAIRED = "paired"


def results_dir(study):
    return os.path.join(ROOT, "docs", "results", study)


def run_dir(study, name):
    return os.path.join(ROOT, "runs", "study", study, name)


def commit_of(binary, given):
    if given:
        return given
    side = binary + ".commit"
    if os.path.exists(side):
        return open(side).read().strip()
    return subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()


def machine():
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "system": platform.platform()}


def run(cmd, log=None):
    """Runs a command line, returns (stdout, seconds); stderr goes to `log` (appended)."""
    t0 = time.time()
    with open(log, "a") if log else open(os.devnull, "w") as err:
        p = subprocess.run(shlex.split(cmd), stdout=subprocess.PIPE, stderr=err, text=True)
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {cmd}" + (f"\n  see {log}" if log else ""))
    return p.stdout, time.time() - t0


def evaluate(binary, study, source):
    s = STUDIES[study]
    common = f"--train {s['train']} --test {s['test']} --resize {s['res']} --json"
    cmds = {k: f"{binary} eval {k} {source} {common}" for k in ("knn", "linear")}
    return cmds, {k: json.loads(run(c)[0]) for k, c in cmds.items()}


def epochs_of(log_path):
    out = []
    if os.path.exists(log_path):
        for line in open(log_path):
            r = json.loads(line)
            if r.get("type") == "epoch":
                out.append({k: r[k] for k in ("epoch", "loss", "acc", "seconds", "img_per_s", "peak_rss_mb", "knn_top1")
                            if k in r})
    return out


def cmd_run(a):
    s = STUDIES[a.study]
    label, opts = ROWS[a.row]
    binary = os.path.abspath(a.bin)
    # A variant (exploration): options appended to the row's, recorded apart under STUDY-explore.
    study = a.study + "-explore" if a.variant else a.study
    row = a.row + (f"+{a.variant}" if a.variant else "")
    name = f"{row}.s{a.seed}"
    out = run_dir(study, name)
    train = (f"{binary} train --data {s['train']} --out {out} {MODEL} --res {s['res']} {s['budget']} {opts} "
             f"{a.extra or ''} --seed {a.seed} --knn-data {s['test']} --knn-bank 60000 --knn-limit 10000")
    train = re.sub(" +", " ", train)
    ckpt = os.path.join(out, "last.safetensors")
    log = out + ".stderr.log"
    os.makedirs(os.path.dirname(out), exist_ok=True)
    t0 = time.time()
    resumed = os.path.exists(ckpt)
    _, seconds = run(train + (" --resume" if resumed else ""), log)
    eval_cmds, ev = evaluate(binary, a.study, f"--checkpoint {ckpt}")
    epochs = epochs_of(os.path.join(out, "log.jsonl"))
    train_s = sum(e["seconds"] for e in epochs)
    images = sum(e["img_per_s"] * e["seconds"] for e in epochs)
    record = {
        "study": study, "row": row, "seed": a.seed,
        "label": label + (f" [{a.extra.strip()}]" if a.extra else "") + (" [timed beside PyTorch]" if a.variant == PAIRED else ""),
        "commit": commit_of(binary, a.commit), "machine": machine(),
        "commands": {"train": train, **eval_cmds},
        "resumed": resumed,
        "epochs": epochs,
        "knn_top1": ev["knn"]["top1"], "linear_top1": ev["linear"]["top1"],
        "linear_weight_decay": ev["linear"].get("weight_decay"),
        "train_seconds": round(train_s, 1), "wall_seconds": round(time.time() - t0, 1),
        "train_img_per_s": round(images / train_s, 1) if train_s else None,
        "peak_rss_mb": max((e.get("peak_rss_mb", 0) for e in epochs), default=None),
    }
    write_record(study, name, record)


def write_record(study, name, record):
    os.makedirs(results_dir(study), exist_ok=True)
    path = os.path.join(results_dir(study), name + ".json")
    with open(path + ".tmp", "w") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
    os.replace(path + ".tmp", path)
    print(f"{path}: kNN {record['knn_top1']:.2f}  linear {record['linear_top1']:.2f}")


def cmd_baselines(a):
    s = STUDIES[a.study]
    binary = os.path.abspath(a.bin)
    base = {"study": a.study, "commit": commit_of(binary, a.commit), "machine": machine()}
    if not os.path.exists(os.path.join(results_dir(a.study), "raw_pixels.json")):
        cmds, ev = evaluate(binary, a.study, "--raw-pixels")
        write_record(a.study, "raw_pixels", {**base, "row": "raw_pixels", "label": "raw pixels", "seed": None,
                                              "commands": cmds, "knn_top1": ev["knn"]["top1"],
                                              "linear_top1": ev["linear"]["top1"]})
    cmds, ev = evaluate(binary, a.study, f"--random-init --seed {a.seed} {MODEL} --in-channels 1")
    write_record(a.study, f"random_init.s{a.seed}", {**base, "row": "random_init", "label": "random-init encoder",
                                                      "seed": a.seed, "commands": cmds,
                                                      "knn_top1": ev["knn"]["top1"], "linear_top1": ev["linear"]["top1"]})


def load_records(study):
    d = results_dir(study)
    if not os.path.isdir(d):
        return []
    return [json.load(open(os.path.join(d, f))) for f in sorted(os.listdir(d)) if f.endswith(".json")]


def mean_std(v, digits=2):
    v = [x for x in v if x is not None]
    if not v:
        return "-"
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{statistics.mean(v):.{digits}f} ± {statistics.stdev(v):.{digits}f}"


def grouped(records):
    order = ["raw_pixels", "random_init"] + list(ROWS)
    groups = {}
    for r in records:
        groups.setdefault(r["row"], []).append(r)
    return [(k, groups[k]) for k in order if k in groups] + [(k, v) for k, v in groups.items() if k not in order]


def all_studies():
    d = os.path.join(ROOT, "docs", "results")
    found = sorted(os.listdir(d)) if os.path.isdir(d) else []
    # The studies, then their explorations (pytorch/ and mpi/ hold other records).
    return [s for s in STUDIES if s in found] + [s + "-explore" for s in STUDIES if s + "-explore" in found]


def title(study):
    base = study.removesuffix("-explore")
    return STUDIES[base]["title"] + (" (exploration)" if study != base else "")


def short_label(record):
    """A record's row label with paths inside the repository made relative to it."""
    return record["label"].replace(ROOT + os.sep, "")


def study_table(study):
    """The markdown table of one study's records (mean ± std over seeds)."""
    records = load_records(study)
    lines = [f"### {title(study)}", "",
             "| row | kNN top-1 | linear top-1 | seeds | train s | img/s | peak RSS MB |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for row, rs in grouped(records):
        label = short_label(rs[0])
        seeds = ",".join(str(r["seed"]) for r in rs if r.get("seed") is not None) or "-"
        knn, lin = mean_std([r["knn_top1"] for r in rs]), mean_std([r["linear_top1"] for r in rs])
        rss = [r.get("peak_rss_mb") for r in rs if r.get("peak_rss_mb")]
        if rss:
            ts = mean_std([r.get("train_seconds") for r in rs], 0).split(" ")[0]
            ips = mean_std([r.get("train_img_per_s") for r in rs], 0).split(" ")[0]
            lines.append(f"| {label} | {knn} | {lin} | {seeds} | {ts} | {ips} | {max(rss):.0f} |")
        else:
            lines.append(f"| {label} | {knn} | {lin} | {seeds} | - | - | - |")
    return "\n".join(lines)


def pytorch_table():
    """salient against the equal-recipe PyTorch reference (docs/results/pytorch/), per method: kNN at
    equal steps, training time, and the time salient needs to reach PyTorch's final kNN."""
    d = os.path.join(ROOT, "docs", "results", "pytorch")
    if not os.path.isdir(d):
        return ""
    ours = load_records("fmnist")
    lines = ["| method | framework | kNN top-1 after 3 epochs | seeds | train s (3 epochs) | img/s | peak RSS MB | "
             "salient's time to PyTorch's final kNN |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for method in ("simclr", "moco"):
        torch_runs = [json.load(open(os.path.join(d, f))) for f in sorted(os.listdir(d))
                      if f.startswith(method + ".") and f.endswith(".json")]
        # kNN over every seed of both frameworks' rows (the same recipe); times only from the runs timed
        # back to back on a quiet machine: salient's `--variant paired` run when there is one, PyTorch's
        # seed 1 (other seeds may have shared the machine with other work).
        mine = [r for r in ours if r["row"] == method]
        mine_timed = [r for r in load_records("fmnist-explore") if r["row"] == f"{method}+{PAIRED}"] or mine
        if not torch_runs or not mine:
            continue
        timed = [r for r in torch_runs if r["seed"] == 1] or torch_runs
        target = statistics.mean(r["knn_top1"] for r in torch_runs)
        # salient's first epoch whose kNN (mean over seeds) reaches PyTorch's final mean, and its training time.
        n = min(len(r["epochs"]) for r in mine + mine_timed)
        reach = "-"
        for i in range(n):
            if statistics.mean(r["epochs"][i]["knn_top1"] for r in mine) >= target:
                t = statistics.mean(sum(e["seconds"] for e in r["epochs"][:i + 1]) for r in mine_timed)
                tt = statistics.mean(r["train_seconds"] for r in timed)
                reach = f"{t:.0f} s (epoch {i + 1}) = {t / tt:.2f}x PyTorch's {tt:.0f} s"
                break
        for name, rs, ts in (("salient", mine, mine_timed), ("PyTorch", torch_runs, timed)):
            lines.append(f"| {method} | {name} | {mean_std([r['knn_top1'] for r in rs])} | "
                         f"{','.join(str(r['seed']) for r in rs)} | "
                         f"{mean_std([r['train_seconds'] for r in ts], 0).split(' ')[0]} | "
                         f"{mean_std([r['train_img_per_s'] for r in ts], 0).split(' ')[0]} | "
                         f"{max(r.get('peak_rss_mb') or 0 for r in ts):.0f} | {reach if name == 'salient' else ''} |")
    return "\n".join(lines)


def cmd_table(a):
    blocks = [study_table(s) for s in all_studies() if load_records(s)]
    torch = pytorch_table()
    text = "\n\n".join(blocks) + ("\n\n### salient and PyTorch, equal recipe\n\n" + torch if torch else "")
    if a.write:
        path = os.path.join(ROOT, "docs", "RESULTS.md")
        doc = open(path).read()
        start, end = "<!-- tables: python3 docs/study.py table --write -->", "<!-- /tables -->"
        i, j = doc.index(start) + len(start), doc.index(end)
        open(path, "w").write(doc[:i] + "\n" + text + "\n" + doc[j:])
        print(f"wrote the tables into {path}", file=sys.stderr)
    else:
        print(text)
    if a.plot:
        plot()


def plot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    studies = [s for s in all_studies() if any(r.get("epochs") for r in load_records(s))]
    if not studies:
        return
    fig, axes = plt.subplots(1, len(studies), figsize=(6.5 * len(studies), 4.6), dpi=110, squeeze=False)
    for ax, study in zip(axes[0], studies):
        records = load_records(study)
        # An exploration's baselines are those of the study it explores.
        baselines = load_records(study.removesuffix("-explore"))
        base = [r["knn_top1"] for r in baselines if r["row"] == "random_init"]
        raw = [r["knn_top1"] for r in baselines if r["row"] == "raw_pixels"]
        for row, rs in grouped(records):
            runs = [[e["knn_top1"] for e in r.get("epochs", []) if "knn_top1" in e] for r in rs]
            runs = [x for x in runs if x]
            if not runs:
                continue
            n = min(len(x) for x in runs)
            ys = [statistics.mean(x[i] for x in runs) for i in range(n)]
            xs = list(range(0, n + 1)) if base else list(range(1, n + 1))
            ax.plot(xs, ([statistics.mean(base)] if base else []) + ys, marker="o", ms=3,
                    label=f"{short_label(rs[0])} ({len(runs)})",
                    linestyle="--" if "masking" not in rs[0]["label"] else "-")
        if raw:
            ax.axhline(raw[0], color="k", lw=1, ls=":", label="raw pixels")
        ax.set_xlabel("epoch (0 = random initialisation)")
        ax.set_ylabel("kNN top-1 % (k 200, all test images), mean over seeds")
        ax.set_title(title(study), fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    path = os.path.join(ROOT, "docs", "knn_curves.png")
    fig.savefig(path)
    print(f"wrote {path}", file=sys.stderr)


def cmd_rows(_):
    for study, s in STUDIES.items():
        print(f"{study}: {s['title']}\n  {MODEL} --res {s['res']} {s['budget']}")
    for row, (label, opts) in ROWS.items():
        print(f"  {row:20s} {label}: {opts}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("rows").set_defaults(f=cmd_rows)
    r = sub.add_parser("run")
    r.add_argument("study", choices=STUDIES)
    r.add_argument("row", choices=ROWS)
    r.add_argument("seed", type=int)
    r.add_argument("--extra", help="options appended to the row's (a later option wins)")
    r.add_argument("--variant", help="name of the --extra variant: the record goes under STUDY-explore")
    b = sub.add_parser("baselines")
    b.add_argument("study", choices=STUDIES)
    b.add_argument("seed", type=int)
    for q in (r, b):
        q.add_argument("--bin", default=os.path.join(ROOT, "bin", "salient"))
        q.add_argument("--commit")
    r.set_defaults(f=cmd_run)
    b.set_defaults(f=cmd_baselines)
    t = sub.add_parser("table")
    t.add_argument("--plot", action="store_true")
    t.add_argument("--write", action="store_true", help="replace the tables in docs/RESULTS.md")
    t.set_defaults(f=cmd_table)
    a = p.parse_args()
    a.f(a)


if __name__ == "__main__":
    main()
