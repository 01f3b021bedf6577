#!/usr/bin/env bash
# A throwaway single-node Slurm cluster on localhost, for tests/test_benchmark.py.
#   bash tests/slurm_local.sh start DIR   writes DIR/slurm.conf, starts munged, slurmctld and slurmd
#                                         (as root), waits until the node is idle; use SLURM_CONF=DIR/slurm.conf
#   bash tests/slurm_local.sh stop DIR    stops the three daemons started in DIR
# Installs nothing: it needs Debian's slurm-wlm and munge (.ci/run installs them).
set -euo pipefail
export PATH=$PATH:/usr/sbin:/sbin  # the daemons live in sbin
usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[[ $# -eq 2 ]] || usage
cmd=$1
dir=$(mkdir -p "$2" && cd "$2" && pwd)
export SLURM_CONF=$dir/slurm.conf

stop() {
    local name pid
    for name in slurmd slurmctld munged; do
        [[ -f $dir/$name.pid ]] || continue
        pid=$(cat "$dir/$name.pid")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$dir/$name.pid"
    done
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

start() {
    chmod 755 "$dir"  # munged wants its socket's directory searchable by all
    mkdir -p "$dir/state" "$dir/spool"
    mungekey --create --keyfile="$dir/munge.key" --force
    munged --force --socket="$dir/munge.sock" --key-file="$dir/munge.key" --pid-file="$dir/munged.pid" \
        --log-file="$dir/munged.log" --seed-file="$dir/munged.seed"
    local host hardware
    host=$(hostname -s)
    # the node's CPUs and memory exactly as slurmd detects them, or the node would stay down
    hardware=$(slurmd -C | head -n 1 | sed 's/^NodeName=[^ ]* //')
    cat > "$SLURM_CONF" <<EOF
ClusterName=benchtest
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
AuthType=auth/munge
AuthInfo=socket=$dir/munge.sock,cred_expire=10
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
NodeName=$host NodeAddr=127.0.0.1 $hardware State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    slurmctld -i
    slurmd
    for _ in $(seq 300); do
        if sinfo -h -N -o %T 2>/dev/null | grep -qx idle; then
            echo "slurm is up: SLURM_CONF=$SLURM_CONF"
            return 0
        fi
        sleep 0.1
    done
    echo "error: the Slurm node did not come up in 30 s; see $dir/slurmctld.log and $dir/slurmd.log" >&2
    sinfo -N -l >&2 || true
    stop
    exit 1
}

case $cmd in
    start) start ;;
    stop) stop ;;
    *) usage ;;
esac
