#!/usr/bin/env bash
# salient beside PyTorch on the same shapes, threads and machine; prints a markdown report.
#
#   Benchmarks/compare.sh [--out FILE]
#
# Environment (all optional):
#   ROUNDS=3        alternating salient/PyTorch rounds (medians are reported)
#   THREADS=2       threads for both frameworks
#   STEPS=5         timed training steps per run (after 2 warm-up steps)
#   EXTRACT_STEPS=5 timed extraction batches per run (PyTorch)
#   PLAIN=1         also compare the plain MoCo v2 step (--masking none)
#   PT_LAYOUTS="nchw channels_last"  PyTorch memory formats for train/extract (the faster is the reference)
#   ONLY="kernels train extract"   which parts to run
#   OUT=FILE        same as --out: write the report into FILE (between bench-compare markers)
#   SALIENT=bin/salient  PYTHON=python3  RAW=DIR (keep the raw JSONL there; default: a temp dir)
set -u

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
ROUNDS="${ROUNDS:-3}"
THREADS="${THREADS:-2}"
STEPS="${STEPS:-5}"
EXTRACT_STEPS="${EXTRACT_STEPS:-5}"
PLAIN="${PLAIN:-0}"
ONLY="${ONLY:-kernels train extract}"
PT_LAYOUTS="${PT_LAYOUTS:-nchw channels_last}"
OUT="${OUT:-}"
SALIENT="${SALIENT:-bin/salient}"
PYTHON="${PYTHON:-python3}"
PYBENCH="Benchmarks/pytorch_bench.py"

while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT="${2:?--out needs a file}"; shift 2 ;;
        --out=*) OUT="${1#--out=}"; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$ROOT/Benchmarks/compare.sh"; exit 0 ;;
        *) echo "compare.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
done

if [ ! -x "$SALIENT" ]; then
    echo "compare.sh: $SALIENT not found: run make first" >&2
    exit 1
fi
if ! "$PYTHON" -c 'import torch, torchvision' >/dev/null 2>&1; then
    echo "compare.sh: PyTorch is needed for the comparison only: pip install torch torchvision" >&2
    exit 1
fi
case "$ROUNDS$THREADS$STEPS" in *[!0-9]*) echo "compare.sh: ROUNDS, THREADS and STEPS must be integers" >&2; exit 2 ;; esac

RAW="${RAW:-$(mktemp -d /tmp/bench-compare.XXXXXX)}"
mkdir -p "$RAW"
: > "$RAW/salient.jsonl"; : > "$RAW/pytorch.jsonl"; : > "$RAW/notes.txt"; : > "$RAW/commands.txt"
LOG="$RAW/stderr.log"; : > "$LOG"

want() { case " $ONLY " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

# Commands: one array per benchmark; salient first, PyTorch second.
S_KERNELS=("$SALIENT" bench kernels --json --threads "$THREADS")
# The same shapes with salient's direct kernels (Winograd off): reported beside the default.
S_KERNELS_DIRECT=("$SALIENT" bench kernels --json --threads "$THREADS" --conv direct)
P_KERNELS=("$PYTHON" "$PYBENCH" kernels --json --threads "$THREADS")
S_TRAIN=("$SALIENT" bench train --arch resnet18 --stem cifar --batch 64 --res 32 --threads "$THREADS" --steps "$STEPS" --json)
P_TRAIN=("$PYTHON" "$PYBENCH" train --arch resnet18 --stem cifar --batch 64 --res 32 --threads "$THREADS" --steps "$STEPS" --json)
S_PLAIN=("${S_TRAIN[@]}" --masking none)
P_PLAIN=("${P_TRAIN[@]}" --masking none)
S_EXTRACT=("$SALIENT" bench extract --json --threads "$THREADS" --batch 256)
P_EXTRACT=("$PYTHON" "$PYBENCH" extract --json --threads "$THREADS" --batch 256 --steps "$EXTRACT_STEPS")
# PyTorch's train/extract also in channels_last (often much faster with oneDNN): *_CL arrays.
P_TRAIN_CL=("${P_TRAIN[@]}" --channels-last)
P_PLAIN_CL=("${P_PLAIN[@]}" --channels-last)
P_EXTRACT_CL=("${P_EXTRACT[@]}" --channels-last)
PT_SUFFIXES=""
for lay in $PT_LAYOUTS; do
    case "$lay" in
        nchw) PT_SUFFIXES="$PT_SUFFIXES -" ;;
        channels_last) PT_SUFFIXES="$PT_SUFFIXES _CL" ;;
        *) echo "compare.sh: PT_LAYOUTS: unknown layout '$lay' (nchw, channels_last)" >&2; exit 2 ;;
    esac
done

# Subcommands that this salient build lacks are skipped (and said so), not fatal. (`salient bench X --help`
# exits 0 even for an unknown X, so read the subcommand list instead.)
BENCH_HELP="$("$SALIENT" bench --help 2>&1)"
has_bench() { printf '%s\n' "$BENCH_HELP" | grep -Eq "^[[:space:]]+$1([[:space:]]|\$)"; }
HAVE_S_TRAIN=1; HAVE_S_EXTRACT=1
if want train && ! has_bench train; then HAVE_S_TRAIN=0; echo "\`salient bench train\`: not in this build of salient" >> "$RAW/notes.txt"; fi
if want extract && ! has_bench extract; then HAVE_S_EXTRACT=0; echo "\`salient bench extract\`: not in this build of salient" >> "$RAW/notes.txt"; fi

# run FRAMEWORK CMD...: appends the JSON lines of one run to FRAMEWORK.jsonl; a failure is noted, not fatal.
run() {
    local fw="$1"; shift
    local out rc
    echo "  [$fw] $*" >&2
    out="$("$@" 2>>"$LOG")"; rc=$?
    printf '%s\n' "$out" | grep '^{' >> "$RAW/$fw.jsonl"
    if [ $rc -ne 0 ]; then
        echo "\`$*\` failed (exit $rc; see $LOG)" >> "$RAW/notes.txt"
        echo "  [$fw] failed with exit $rc" >&2
    fi
}

# pair ROUND HAVE_SALIENT SALIENT_ARRAY PYTORCH_ARRAY [PER_LAYOUT]: salient first in odd rounds, PyTorch first
# in even ones; with PER_LAYOUT=1, PyTorch runs once per layout in PT_LAYOUTS (PYTORCH_ARRAY, PYTORCH_ARRAY_CL).
pytorch_runs() {
    local base="$1" per_layout="$2" suf
    if [ "$per_layout" = 1 ]; then
        for suf in $PT_SUFFIXES; do
            [ "$suf" = - ] && suf=""
            local -n p="$base$suf"; run pytorch "${p[@]}"; unset -n p
        done
    else
        local -n p="$base"; run pytorch "${p[@]}"
    fi
}
pair() {
    local r="$1" have="$2"; local -n s="$3"; local pbase="$4" per_layout="${5:-0}"
    if [ $((r % 2)) -eq 1 ]; then
        [ "$have" = 1 ] && run salient "${s[@]}"
        pytorch_runs "$pbase" "$per_layout"
    else
        pytorch_runs "$pbase" "$per_layout"
        [ "$have" = 1 ] && run salient "${s[@]}"
    fi
}

layouts_echo() {  # the PyTorch command of each layout
    local base="$1" suf
    for suf in $PT_SUFFIXES; do [ "$suf" = - ] && suf=""; local -n p="$base$suf"; echo "${p[*]}"; unset -n p; done
}
{
    want kernels && { echo "${S_KERNELS[*]}"; echo "${S_KERNELS_DIRECT[*]}"; echo "${P_KERNELS[*]}"; }
    want train && { echo "${S_TRAIN[*]}"; layouts_echo P_TRAIN; }
    want train && [ "$PLAIN" = 1 ] && { echo "${S_PLAIN[*]}"; layouts_echo P_PLAIN; }
    want extract && { echo "${S_EXTRACT[*]}"; layouts_echo P_EXTRACT; }
} >> "$RAW/commands.txt"

LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)"
START=$(date +%s)
for r in $(seq 1 "$ROUNDS"); do
    echo "round $r/$ROUNDS" >&2
    want kernels && pair "$r" 1 S_KERNELS P_KERNELS
    want kernels && run salient "${S_KERNELS_DIRECT[@]}"
    want train && pair "$r" "$HAVE_S_TRAIN" S_TRAIN P_TRAIN 1
    want train && [ "$PLAIN" = 1 ] && pair "$r" "$HAVE_S_TRAIN" S_PLAIN P_PLAIN 1
    want extract && pair "$r" "$HAVE_S_EXTRACT" S_EXTRACT P_EXTRACT 1
done
ELAPSED=$(( $(date +%s) - START ))

{
    echo "cpu: $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)"
    echo "cores (nproc): $(nproc)"
    echo "threads: $THREADS"
    echo "rounds: $ROUNDS"
    echo "load average before / after: $LOAD_BEFORE / $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null) (other work on the machine skews both frameworks)"
    echo "salient: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown) ($SALIENT)"
    echo "PyTorch: $("$PYTHON" -c 'import torch, torchvision; print(torch.__version__, "/ torchvision", torchvision.__version__, "/ oneDNN", torch.backends.mkldnn.is_available())' 2>/dev/null)"
    echo "os: $(uname -sr)"
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC') (wall time ${ELAPSED} s)"
    echo "raw results: $RAW"
} > "$RAW/meta.txt"

if [ -n "$OUT" ]; then
    "$PYTHON" Benchmarks/summarize.py "$RAW" --out "$OUT"
else
    "$PYTHON" Benchmarks/summarize.py "$RAW"
fi
