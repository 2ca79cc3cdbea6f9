#!/usr/bin/env bash
# Two test hosts on this machine: network namespaces joined by a veth pair, for salient's multi-host
# runs (Tests/MPI/two_hosts.sh, Benchmarks/mpi_scaling.sh). Needs root, iproute2 and Open MPI.
#   source Tests/MPI/hosts.sh; hosts_up [RATE]     RATE: e.g. 1gbit or 100mbit (tc tbf on both ends)
#   hosts_mpirun ARGS...                           mpirun with one rank in each namespace
#   hosts_down
# Traffic stays on the namespaces' own addresses (10.231.7.1 and 10.231.7.2); mpirun starts the
# remote daemon through `ip netns exec` (a launch agent) instead of ssh.
HOSTS_A=salient-a-$$ HOSTS_B=salient-b-$$
HOSTS_NET=10.231.7
HOSTS_AGENT=$(mktemp -d)/nsagent

hosts_up() {
    local rate=${1:-}
    ip netns add $HOSTS_A && ip netns add $HOSTS_B || return 1
    ip link add vsa$$ type veth peer name vsb$$ || return 1
    ip link set vsa$$ netns $HOSTS_A && ip link set vsb$$ netns $HOSTS_B
    ip -n $HOSTS_A addr add $HOSTS_NET.1/24 dev vsa$$ && ip -n $HOSTS_B addr add $HOSTS_NET.2/24 dev vsb$$
    for ns in $HOSTS_A $HOSTS_B; do ip -n $ns link set lo up; done
    ip -n $HOSTS_A link set vsa$$ up && ip -n $HOSTS_B link set vsb$$ up
    if [ -n "$rate" ]; then
        ip netns exec $HOSTS_A tc qdisc add dev vsa$$ root tbf rate $rate burst 256kb latency 20ms || return 1
        ip netns exec $HOSTS_B tc qdisc add dev vsb$$ root tbf rate $rate burst 256kb latency 20ms || return 1
    fi
    printf '#!/bin/sh\nhost=$1; shift\nexec ip netns exec "$host" sh -c "$*"\n' > $HOSTS_AGENT
    chmod +x $HOSTS_AGENT
}

hosts_mpirun() {
    OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
    ip netns exec $HOSTS_A mpirun --mca plm_rsh_agent $HOSTS_AGENT --mca btl tcp,self \
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
    ip netns pids $HOSTS_A 2>/dev/null | xargs -r kill -9 2>/dev/null
    ip netns pids $HOSTS_B 2>/dev/null | xargs -r kill -9 2>/dev/null
    ip netns del $HOSTS_A 2>/dev/null; ip netns del $HOSTS_B 2>/dev/null
    rm -rf "$(dirname $HOSTS_AGENT)"
}
