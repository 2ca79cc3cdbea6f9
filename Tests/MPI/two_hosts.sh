#!/usr/bin/env bash
# salient on two hosts: one rank in each of two network namespaces, MPI over TCP between them
# (Tests/MPI/hosts.sh). Checks that training across the hosts runs and checkpoints, that a frozen
# host ends the job with a message naming the wait within the peer timeout (no hang), and that the
# last checkpoint stays loadable. Ends with "N passed, M failed". Needs root, iproute2, Open MPI.
set -u
cd "$(dirname "$0")/../.."
BIN=${BIN:-.build/release/salient}
source Tests/MPI/hosts.sh
trap hosts_down EXIT
WORK=$(mktemp -d)
pass=0 fail=0
check() { if eval "$2"; then pass=$((pass + 1)); echo "ok: $1"; else fail=$((fail + 1)); echo "FAILED: $1"; fi; }

[ -x "$BIN" ] || { echo "$BIN is not built"; echo "0 passed, 1 failed"; exit 1; }
hosts_up 1gbit || { echo "could not create the test hosts (root and iproute2 needed)"; echo "0 passed, 1 failed"; exit 1; }
# A small labelled dataset: 256 gray 16x16 images (IDX), random pixels: these runs check the transport, not learning.
random_idx() {
    local n=$1 out=$2
    { printf '\x00\x00\x08\x03'; printf "\\x$(printf %02x $((n >> 24 & 255)))\\x$(printf %02x $((n >> 16 & 255)))\\x$(printf %02x $((n >> 8 & 255)))\\x$(printf %02x $((n & 255)))"
      printf '\x00\x00\x00\x10\x00\x00\x00\x10'; head -c $((n * 256)) /dev/urandom; } > "$out"
}
random_idx 256 $WORK/train-images-idx3-ubyte
ARGS="--data $WORK/train-images-idx3-ubyte --width 0.125 --res 16 --batch 64 --method moco --masking saliency --saliency-warmup 0"

# 1. A run across the two hosts trains, checkpoints on rank 0's host and reports both ranks.
hosts_mpirun $BIN train $ARGS --out $WORK/run --epochs 2 > $WORK/run.log 2>&1
rc=$?
check "two-host training exits 0 (rc $rc)" '[ $rc -eq 0 ]'
check "two-host training runs 2 ranks" 'grep -q "in each of 2 ranks" $WORK/run.log'
check "two-host training wrote its checkpoint" '[ -s $WORK/run/last.safetensors ]'
[ $rc -eq 0 ] || { echo "-- the end of its log:"; tail -n 25 $WORK/run.log; }

# 2. A host that freezes (its rank stopped): the job ends within the peer timeout plus a few seconds.
hosts_mpirun $BIN train $ARGS --out $WORK/frozen --epochs 50 --peer-timeout 5 > $WORK/frozen.log 2>&1 &
job=$!
for _ in $(seq 100); do victim=$(hosts_pid_in_b "salient train"); [ -n "$victim" ] && break; sleep 0.1; done
sleep 3
kill -STOP $victim 2>/dev/null
start=$(date +%s)
while kill -0 $job 2>/dev/null && [ $(( $(date +%s) - start )) -lt 60 ]; do sleep 0.2; done
elapsed=$(( $(date +%s) - start ))
kill -0 $job 2>/dev/null && { kill -9 $job; check "a frozen host ends the job (still running after 60 s)" false; } || \
    check "a frozen host ends the job within 20 s (took $elapsed s)" '[ $elapsed -le 20 ]'
check "the message names the wait" 'grep -q "no answer from the other ranks within the timeout" $WORK/frozen.log'
check "the last checkpoint stays loadable" '$BIN export --checkpoint $WORK/frozen/last.safetensors --out $WORK/frozen.safetensors > /dev/null 2>&1'

echo "$pass passed, $fail failed"
rm -rf $WORK
[ $fail -eq 0 ]
