#!/usr/bin/env bash
# Data-parallel scaling of salient's training step on this machine: one process of 2 threads, two
# ranks of 1 thread on loopback, and two ranks in two network namespaces joined by a veth pair with a
# tc rate limit standing in for board Ethernet (Tests/MPI/hosts.sh). Prints one JSON line per run
# (salient bench train --json under mpirun), ROUNDS rounds of each, alternating; on the rate-limited
# links also without overlap (--bucket-kb 0: one gradient sum after backward), for what overlap hides.
#   Benchmarks/mpi_scaling.sh [WIDTH ...]          (default widths: 0.25 1; needs root and Open MPI)
# Environment: ROUNDS (3), STEPS (8), BATCH (128), METHOD (moco), MASKING (none), RATES ("1gbit 100mbit").
set -u
cd "$(dirname "$0")/.."
BIN=${BIN:-bin/salient}
ROUNDS=${ROUNDS:-3} STEPS=${STEPS:-8} BATCH=${BATCH:-128} METHOD=${METHOD:-moco} MASKING=${MASKING:-none}
RATES=${RATES:-"1gbit 100mbit"}
WIDTHS=${*:-"0.25 1"}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
source Tests/MPI/hosts.sh
trap hosts_down EXIT
tag() { sed "s/^{/{\"setup\": \"$1\", /"; }
for w in $WIDTHS; do
    ARGS="--width $w --batch $BATCH --channels 1 --method $METHOD --masking $MASKING --steps $STEPS --json"
    for r in $(seq $ROUNDS); do
        SALIENT_THREADS=2 $BIN bench train $ARGS 2>/dev/null | tag "1 process x 2 threads"
        SALIENT_THREADS=1 mpirun -np 2 --bind-to none --mca rtc_hwloc_vmhole none -x SALIENT_THREADS \
            $BIN bench train $ARGS 2>/dev/null | tag "2 ranks x 1 thread, loopback"
        for rate in $RATES; do
            hosts_up $rate >/dev/null 2>&1 || { echo "no test hosts (root needed)" >&2; exit 1; }
            SALIENT_THREADS=1 hosts_mpirun -x SALIENT_THREADS $BIN bench train $ARGS 2>/dev/null \
                | tag "2 ranks x 1 thread, $rate link"
            # The same without overlap: one gradient sum after backward.
            SALIENT_THREADS=1 hosts_mpirun -x SALIENT_THREADS $BIN bench train $ARGS --bucket-kb 0 2>/dev/null \
                | tag "2 ranks x 1 thread, $rate link, no overlap"
            hosts_down
        done
    done
done
