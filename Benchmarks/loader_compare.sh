#!/usr/bin/env bash
# salient's data loader beside torchvision's ImageFolder + DataLoader on the same JPEG folder, the same
# augmentations (two MoCo v2 views per image), the same number of threads / worker processes:
#
#   Benchmarks/loader_compare.sh DATA [ROUNDS]        (DATA: class folders of JPEGs, e.g. from make_photos.py)
#   env: RES (224), BATCH (32), BATCHES (8), THREADS (2), BIN (bin/salient), DECODE_IMAGES (64: the
#        first images of DATA that --decode-compare times, 3 times each)
#
# Each round runs, one after the other: salient streamed with DCT scaling (every access reads and
# decodes the file, as ImageFolder does), salient streamed at full size, salient with the decoded
# (DCT-scaled) images held in memory (its default when they fit), PyTorch with THREADS workers; and
# `salient bench loader --decode-compare` (decode + one view, 1 thread, full size against DCT-scaled).
# Memory: peak PSS and RSS of the whole process tree (peak_memory.py). Prints the medians over rounds
# and the ratios to PyTorch as a markdown table; the raw JSON lines stay in $OUT (a temp file).
set -euo pipefail
DATA=${1:?usage: loader_compare.sh DATA [ROUNDS]}
ROUNDS=${2:-3}
RES=${RES:-224}; BATCH=${BATCH:-32}; BATCHES=${BATCHES:-8}; THREADS=${THREADS:-2}; BIN=${BIN:-bin/salient}
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-$(mktemp /tmp/loader_compare.XXXXXX.jsonl)}
common=(--data "$DATA" --res "$RES" --batch "$BATCH" --batches "$BATCHES" --threads "$THREADS" --json)
for r in $(seq "$ROUNDS"); do
    for mode in salient_dct_stream salient_full_stream salient_dct_memory pytorch; do
        case $mode in
            salient_dct_stream)  cmd=("$BIN" bench loader "${common[@]}" --stream) ;;
            salient_full_stream) cmd=("$BIN" bench loader "${common[@]}" --stream --full-decode) ;;
            salient_dct_memory)  cmd=("$BIN" bench loader "${common[@]}") ;;
            pytorch) cmd=(python3 "$HERE/pytorch_loader.py" "$DATA" --res "$RES" --batch "$BATCH" --batches "$BATCHES"
                          --workers "$THREADS" --json) ;;
        esac
        lines=$(python3 "$HERE/peak_memory.py" --json -- "${cmd[@]}" 2>/dev/null | grep '^{' | tail -2 | paste -sd,)
        echo "{\"mode\": \"$mode\", \"round\": $r, \"result\": [$lines]}" >> "$OUT"
        echo "round $r $mode: $lines" >&2
    done
    line=$("$BIN" bench loader --data "$DATA" --res "$RES" --decode-compare --limit "${DECODE_IMAGES:-64}" --json | grep '^{')
    echo "{\"mode\": \"decode_compare\", \"round\": $r, \"result\": [$line]}" >> "$OUT"
    echo "round $r decode_compare: $line" >&2
done
python3 - "$OUT" "$RES" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(mode, key):
    # the last record that has the key: peak_memory.py's for the memory fields (salient reports its own too)
    v = [next(d[key] for d in reversed(r["result"]) if key in d) for r in rows if r["mode"] == mode]
    return statistics.median(v) if v else float("nan")
print("| run | images/s | peak PSS MB | peak RSS MB | images/s vs PyTorch | PSS vs PyTorch |")
print("|---|---|---|---|---|---|")
pt, pm = med("pytorch", "img_per_s"), med("pytorch", "peak_pss_mb")
for m in ("salient_dct_stream", "salient_full_stream", "salient_dct_memory", "pytorch"):
    i, p, r = med(m, "img_per_s"), med(m, "peak_pss_mb"), med(m, "peak_rss_mb")
    print(f"| {m} | {i:.1f} | {p:.0f} | {r:.0f} | {i / pt:.2f}x | {p / pm:.2f} |")
f, s = med("decode_compare", "full_ms"), med("decode_compare", "scaled_ms")
print(f"\ndecode + one {sys.argv[2]} px view, 1 thread (medians): "
      f"full size {f:.1f} ms, DCT-scaled {s:.1f} ms per image: {f / s:.2f}x")
print(f"({len(rows) // 5} rounds; raw results in {sys.argv[1]})")
PY
