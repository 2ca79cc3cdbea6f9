#!/usr/bin/env bash
# Two test hosts on this machine: network namespaces joined by a veth pair, for salient's multi-host
# runs (Tests/MPI/two_hosts.sh, Benchmarks/mpi_scaling.sh). Needs root, iproute2 and Open MPI.
#   source Tests/MPI/hosts.sh; hosts_up [RATE]     RATE: e.g. 1gbit or 100mbit (tc tbf on both ends)
#   hosts_mpirun ARGS...                           mpirun with one rank in each namespace
#   hosts_down
# Traffic stays on the namespaces' own addresses (10.231.7.1 and 10.231.7.2); mpirun starts the
# remote daemon through `ip netns exec` (a launch agent) instead of ssh.
HOSTS_NET=10.231.7
HOSTS_COUNT=0

# Creates the two hosts (new names each time, so that a call after hosts_down never meets leftovers).
hosts_up() {
    local rate=${1:-}
    HOSTS_COUNT=$((HOSTS_COUNT + 1))
    HOSTS_A=salient-a-$$-$HOSTS_COUNT HOSTS_B=salient-b-$$-$HOSTS_COUNT
    local va=sa$$x$HOSTS_COUNT vb=sb$$x$HOSTS_COUNT
    HOSTS_AGENT=$(mktemp -d)/nsagent
    ip netns add $HOSTS_A && ip netns add $HOSTS_B || return 1
    ip link add $va type veth peer name $vb || return 1
    ip link set $va netns $HOSTS_A && ip link set $vb netns $HOSTS_B
    ip -n $HOSTS_A addr add $HOSTS_NET.1/24 dev $va && ip -n $HOSTS_B addr add $HOSTS_NET.2/24 dev $vb
    for ns in $HOSTS_A $HOSTS_B; do ip -n $ns link set lo up; done
    ip -n $HOSTS_A link set $va up && ip -n $HOSTS_B link set $vb up
    if [ -n "$rate" ]; then
        ip netns exec $HOSTS_A tc qdisc add dev $va root tbf rate $rate burst 256kb latency 20ms || return 1
        ip netns exec $HOSTS_B tc qdisc add dev $vb root tbf rate $rate burst 256kb latency 20ms || return 1
    fi
    printf '#!/bin/sh\nhost=$1; shift\nexec ip netns exec "$host" sh -c "$*"\n' > $HOSTS_AGENT
    chmod +x $HOSTS_AGENT
}

# rtc_hwloc_vmhole none: Open MPI 4.1's daemon otherwise maps its hwloc topology into the middle of
# the largest hole in its address space, and about one start in six it segfaults there
# (hwloc_shmem_topology_write, before any rank runs); the option only turns off that shared copy.
hosts_mpirun() {
    OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
    ip netns exec $HOSTS_A mpirun --mca plm_rsh_agent $HOSTS_AGENT --mca rtc_hwloc_vmhole none --mca btl tcp,self \
        --mca btl_tcp_if_include $HOSTS_NET.0/24 --mca oob_tcp_if_include $HOSTS_NET.0/24 \
        -H $HOSTS_A,$HOSTS_B -np 2 --bind-to none "$@"
}

# The pid of a process in namespace B whose command line contains $1.
hosts_pid_in_b() {
    for p in $(ip netns pids $HOSTS_B); do
        tr '\0' ' ' < /proc/$p/cmdline 2>/dev/null | grep -q -- "$1" && { echo $p; return; }
    done
}

hosts_down() {
    [ -n "${HOSTS_A:-}" ] || return 0
    ip netns pids $HOSTS_A 2>/dev/null | xargs -r kill -9 2>/dev/null
    ip netns pids $HOSTS_B 2>/dev/null | xargs -r kill -9 2>/dev/null
    ip netns del $HOSTS_A 2>/dev/null; ip netns del $HOSTS_B 2>/dev/null
    rm -rf "$(dirname $HOSTS_AGENT)"
    HOSTS_A=
}
