#!/usr/bin/env bash
# Thread scaling of salient's training step (and feature extraction) on this machine: images/s at
# each thread count, the speedup over 1 thread and the parallel efficiency; prints a markdown report.
#
#   Benchmarks/scaling.sh
#
# Environment (all optional):
#   THREADS_LIST="1 2 4 8 16"  thread counts (default: 1, the powers of two below nproc, and nproc)
#   BATCH=256 STEPS=3 ROUNDS=1  training batch, timed steps per run (after 2 warm-ups), runs per count
#                               (the median over rounds is reported)
#   ARCH=resnet18 STEM=cifar RES=32 MASKING=saliency
#   EXTRACT=1                   also time feature extraction at each count (batch EXTRACT_BATCH=256)
#   PYTORCH_THREADS="16"        counts at which to run Benchmarks/pytorch_bench.py's same step too
#                               (NCHW and channels_last, the faster is the reference; needs torch)
#   SALIENT=bin/salient PYTHON=python3
# Needs only bash, awk and sort (and python3 with torch for PYTORCH_THREADS).
set -u

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
NPROC="$(nproc 2>/dev/null || echo 1)"
if [ -z "${THREADS_LIST:-}" ]; then
    THREADS_LIST="1"; t=2
    while [ "$t" -lt "$NPROC" ]; do THREADS_LIST="$THREADS_LIST $t"; t=$((t * 2)); done
    [ "$NPROC" -gt 1 ] && THREADS_LIST="$THREADS_LIST $NPROC"
fi
BATCH="${BATCH:-256}"; STEPS="${STEPS:-3}"; ROUNDS="${ROUNDS:-1}"
ARCH="${ARCH:-resnet18}"; STEM="${STEM:-cifar}"; RES="${RES:-32}"; MASKING="${MASKING:-saliency}"
EXTRACT="${EXTRACT:-0}"; EXTRACT_BATCH="${EXTRACT_BATCH:-256}"
PYTORCH_THREADS="${PYTORCH_THREADS:-}"
SALIENT="${SALIENT:-bin/salient}"; PYTHON="${PYTHON:-python3}"

case "$BATCH$STEPS$ROUNDS$EXTRACT_BATCH${THREADS_LIST// /}${PYTORCH_THREADS// /}" in
    *[!0-9]*) echo "scaling.sh: BATCH, STEPS, ROUNDS, EXTRACT_BATCH and the thread lists must be integers" >&2; exit 2 ;;
esac
if [ ! -x "$SALIENT" ]; then
    echo "scaling.sh: $SALIENT not found: run make build first" >&2
    exit 1
fi

# field NAME <<< JSON-line: the number after "NAME": (salient's and pytorch_bench's JSON are flat).
field() { sed -n "s/.*\"$1\": *\([-0-9.eE+]*\).*/\1/p" | head -n 1; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print ""; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
fail() { echo "scaling.sh: $*" >&2; exit 1; }

# run_median FIELD CMD...: runs CMD ROUNDS times, prints the median of FIELD (and writes the largest
# peak_rss_mb of its runs to $RSSFILE: it runs in a subshell).
run_median() {
    local name="$1"; shift
    local vals="" line r rss=0
    for ((r = 0; r < ROUNDS; r++)); do
        line="$("$@" 2>>"$ERRLOG" | tail -n 1)" || fail "'$*' failed (see $ERRLOG)"
        local v; v="$(field "$name" <<< "$line")"
        [ -n "$v" ] || fail "'$*' printed no $name: $line"
        vals="$vals$v"$'\n'
        rss="$(awk -v a="$rss" -v b="$(field peak_rss_mb <<< "$line")" 'BEGIN { print (b + 0 > a + 0) ? b : a }')"
    done
    echo "$rss" > "$RSSFILE"
    printf '%s' "$vals" | median
}

ERRLOG="$(mktemp /tmp/scaling-stderr.XXXXXX)"
RSSFILE="$(mktemp /tmp/scaling-rss.XXXXXX)"
echo "## Thread scaling: $ARCH ($STEM stem), ${RES} px, batch $BATCH, masking $MASKING"
echo
echo "- machine: $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null), $NPROC logical CPUs"
echo "- binary: $SALIENT ($("$SALIENT" --version 2>/dev/null || echo unknown version)); $ROUNDS round(s) of $STEPS timed steps per count, medians"
echo "- command: THREADS_LIST=\"$THREADS_LIST\" BATCH=$BATCH STEPS=$STEPS ROUNDS=$ROUNDS EXTRACT=$EXTRACT PYTORCH_THREADS=\"$PYTORCH_THREADS\" Benchmarks/scaling.sh"
echo
if [ "$EXTRACT" = 1 ]; then
    echo "| threads | step img/s | speedup | efficiency | step s | peak RSS MB | extract img/s | speedup |"
    echo "|---:|---:|---:|---:|---:|---:|---:|---:|"
else
    echo "| threads | step img/s | speedup | efficiency | step s | peak RSS MB |"
    echo "|---:|---:|---:|---:|---:|---:|"
fi
BASE=""; BASE_X=""
declare -A SAL
for t in $THREADS_LIST; do
    ips="$(run_median img_per_s "$SALIENT" bench train --arch "$ARCH" --stem "$STEM" --res "$RES" --batch "$BATCH" \
        --masking "$MASKING" --steps "$STEPS" --threads "$t" --json)" || exit 1
    rss="$(cat "$RSSFILE")"
    SAL[$t]="$ips"
    [ -n "$BASE" ] || BASE="$ips"
    row="$(awk -v t="$t" -v v="$ips" -v b="$BASE" -v m="$rss" -v n="$BATCH" \
        'BEGIN { s = v / b; printf "| %d | %.1f | %.2fx | %.0f%% | %.2f | %.0f |", t, v, s, 100 * s / t, n / v, m }')"
    if [ "$EXTRACT" = 1 ]; then
        x="$(run_median img_per_s "$SALIENT" bench extract --arch "$ARCH" --stem "$STEM" --res "$RES" \
            --batch "$EXTRACT_BATCH" --threads "$t" --json)" || exit 1
        [ -n "$BASE_X" ] || BASE_X="$x"
        row="$row$(awk -v v="$x" -v b="$BASE_X" 'BEGIN { printf " %.1f | %.2fx |", v, v / b }')"
    fi
    echo "$row"
done

if [ -n "$PYTORCH_THREADS" ]; then
    "$PYTHON" -c 'import torch, torchvision' >/dev/null 2>&1 || fail "PYTORCH_THREADS needs torch and torchvision for $PYTHON"
    echo
    echo "PyTorch $("$PYTHON" -c 'import torch; print(torch.__version__)') on the same step (Benchmarks/pytorch_bench.py train), faster layout:"
    echo
    echo "| threads | salient img/s | PyTorch NCHW | PyTorch channels_last | ratio |"
    echo "|---:|---:|---:|---:|---:|"
    for t in $PYTORCH_THREADS; do
        pt=(env PYTHONUNBUFFERED=1 "$PYTHON" Benchmarks/pytorch_bench.py train --arch "$ARCH" --stem "$STEM" --res "$RES"
            --batch "$BATCH" --masking "$MASKING" --steps "$STEPS" --threads "$t" --json)
        nchw="$(run_median img_per_s "${pt[@]}")" || exit 1
        cl="$(run_median img_per_s "${pt[@]}" --channels-last)" || exit 1
        s="${SAL[$t]:-}"
        if [ -z "$s" ]; then
            s="$(run_median img_per_s "$SALIENT" bench train --arch "$ARCH" --stem "$STEM" --res "$RES" --batch "$BATCH" \
                --masking "$MASKING" --steps "$STEPS" --threads "$t" --json)" || exit 1
        fi
        awk -v t="$t" -v s="$s" -v a="$nchw" -v c="$cl" \
            'BEGIN { b = (a > c) ? a : c; printf "| %d | %.1f | %.1f | %.1f | %.2fx |\n", t, s, a, c, s / b }'
    done
fi
rm -f "$ERRLOG" "$RSSFILE"
