#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, for trying the Slurm profile and for its test.
#
#   scripts/slurm_local.sh start DIR   (as root) install slurm-wlm + munge from Debian when missing, write
#                                      DIR/slurm.conf, start munged, slurmctld and slurmd in the background
#                                      (PIDs in DIR/pids/), wait until the node is idle
#   scripts/slurm_local.sh stop DIR    cancel this cluster's jobs, stop the three daemons by their recorded PIDs
#
# Then `export SLURM_CONF=DIR/slurm.conf` (also in DIR/env) points sinfo, sbatch, squeue and Snakemake's Slurm
# executor at it. The node is this machine (its CPUs and memory from `slurmd -C`) in one partition, `local`.
# Everything lives under DIR: the munge key and socket, Slurm's state, spool and logs. No systemd, no cgroups
# (proctrack/linuxproc, task/none), no accounting database (squeue and scontrol answer for finished jobs for
# MinJobAge = 1 hour). SLURM_LOCAL_GPUS=N (default 0) declares N GPUs, stood in for by copies of /dev/null, so
# that jobs asking for GPUs are scheduled on a machine without any: CUDA stays unavailable to them. One such
# cluster at a time per machine (see DEFAULT_CONF below).
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
CMD=$1
mkdir -p "$2"
DIR=$(cd "$2" && pwd)
CONF=$DIR/slurm.conf
PIDS=$DIR/pids

log() { echo "[slurm_local] $*" >&2; }

install_packages() {
    local missing=0 policy_added=0
    for b in munged mungekey slurmctld slurmd sbatch sinfo squeue scontrol scancel; do
        command -v "$b" >/dev/null 2>&1 || missing=1
    done
    [ "$missing" = 0 ] && return 0
    log "installing slurm-wlm and munge with apt-get"
    # Debian's postinst scripts would start the packaged system services: a policy-rc.d that denies it keeps
    # this cluster the only one running (kept if the system already has one, as Docker images do).
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        policy_added=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    local apt=(apt-get -o DPkg::Lock::Timeout=600 -y -qq --no-install-recommends)
    if ! "${apt[@]}" install slurm-wlm munge >/dev/null; then
        apt-get -o DPkg::Lock::Timeout=600 update -qq
        "${apt[@]}" install slurm-wlm munge >/dev/null
    fi
    [ "$policy_added" = 0 ] || rm -f /usr/sbin/policy-rc.d
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

alive() { [ -f "$PIDS/$1.pid" ] && kill -0 "$(cat "$PIDS/$1.pid")" 2>/dev/null; }

# run DAEMON_NAME COMMAND...: in the foreground of its own session, in the background of this script
run_daemon() {
    local name=$1; shift
    setsid "$@" </dev/null >"$DIR/log/$name.out" 2>&1 &
    echo $! >"$PIDS/$name.pid"
}

write_conf() {
    local node topology mem port gpus=${SLURM_LOCAL_GPUS:-0} user
    # this machine as slurmd sees it: "NodeName=... CPUs=2 Boards=1 SocketsPerBoard=1 ... RealMemory=24105"
    node=$(slurmd -C | head -1)
    topology=$(grep -o -E '(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=[0-9]+' <<<"$node" | xargs)
    mem=$(grep -o -E 'RealMemory=[0-9]+' <<<"$node" | cut -d= -f2)
    # slurmd drains a node that claims more memory than it has: leave a little room
    mem=$(( mem * 95 / 100 ))
    port=${SLURM_LOCAL_PORT:-}
    if [ -z "$port" ]; then
        for port in $(seq 16817 2 16999); do
            port_free "$port" && port_free $((port + 1)) && break
        done
    fi
    user=$(id -un)
    local gres_node="" gres_types=""
    if [ "$gpus" -gt 0 ]; then
        gres_types="GresTypes=gpu"
        gres_node="Gres=gpu:$gpus"
        # gres/gpu counts device files: copies of /dev/null stand in for them (plain files where mknod is not
        # allowed, which slurmd accepts with an error in its log)
        mkdir -p "$DIR/fakegpu"
        local files=() f
        for i in $(seq 0 $((gpus - 1))); do
            f=$DIR/fakegpu/gpu$i
            [ -e "$f" ] || mknod "$f" c 1 3 2>/dev/null || touch "$f"
            files+=("$f")
        done
        echo "NodeName=localhost Name=gpu File=$(IFS=,; echo "${files[*]}")" >"$DIR/gres.conf"
    fi
    cat >"$CONF" <<EOF
# Written by scripts/slurm_local.sh: a one-node cluster on this machine, everything under $DIR.
ClusterName=t4plocal
SlurmctldHost=localhost
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=$user
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
ReturnToService=2
MinJobAge=3600
SlurmdTimeout=300
$gres_types
NodeName=localhost NodeAddr=127.0.0.1 $topology RealMemory=$mem $gres_node State=UNKNOWN
PartitionName=local Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
    echo "export SLURM_CONF=$CONF" >"$DIR/env"
}

# The Slurm executor's job step (snakemake-executor-plugin-slurm-jobstep) runs the rule under `srun` with every
# SLURM_* variable but the job's identity removed, SLURM_CONF included: srun then reads Slurm's default path.
# So that path links to this cluster's slurm.conf while it runs (a real file there, another cluster's, is left
# alone and the start fails).
DEFAULT_CONF=/etc/slurm/slurm.conf

link_default_conf() {
    if [ -e "$DEFAULT_CONF" ] && [ ! -L "$DEFAULT_CONF" ]; then
        log "$DEFAULT_CONF exists and is not a link made by this script: this machine has its own Slurm; not starting"
        exit 1
    fi
    mkdir -p "$(dirname "$DEFAULT_CONF")"
    ln -sfn "$CONF" "$DEFAULT_CONF"
}

unlink_default_conf() {
    if [ -L "$DEFAULT_CONF" ] && [ "$(readlink "$DEFAULT_CONF")" = "$CONF" ]; then rm -f "$DEFAULT_CONF"; fi
}

start() {
    if [ "$(id -u)" != 0 ]; then
        log "start needs root: slurmd runs each job as its user, and Slurm and munge are installed with apt-get"
        exit 1
    fi
    if alive slurmctld || alive slurmd || alive munged; then
        log "a cluster is already running from $DIR (stop it first)"; exit 1
    fi
    install_packages
    mkdir -p "$DIR"/{munge,state,spool,run,log} "$PIDS"
    # munged checks these: the socket's directory readable by all, the key private to its owner
    chmod 755 "$DIR/munge"
    [ -f "$DIR/munge/munge.key" ] || mungekey --create --keyfile="$DIR/munge/munge.key"
    chmod 600 "$DIR/munge/munge.key"
    write_conf
    link_default_conf
    export SLURM_CONF=$CONF
    run_daemon munged munged --foreground --force --key-file="$DIR/munge/munge.key" \
        --socket="$DIR/munge/munge.socket" --pid-file="$DIR/run/munged.pid" \
        --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed"
    for _ in $(seq 100); do [ -S "$DIR/munge/munge.socket" ] && break; sleep 0.1; done
    [ -S "$DIR/munge/munge.socket" ] || { log "munged did not start:"; cat "$DIR/log/munged.out" >&2; exit 1; }
    run_daemon slurmctld slurmctld -D -i -f "$CONF"
    run_daemon slurmd slurmd -D -N localhost -f "$CONF"
    local state=""
    for _ in $(seq 120); do
        state=$(sinfo -h -N -n localhost -o %t 2>/dev/null || true)
        [ "$state" = idle ] && break
        if ! alive slurmctld || ! alive slurmd; then break; fi
        sleep 0.5
    done
    if [ "$state" != idle ]; then
        log "the node did not become idle (state: '${state:-no answer}'); logs:"
        tail -n 20 "$DIR"/log/*.out "$DIR"/log/slurmctld.log "$DIR"/log/slurmd.log >&2 2>/dev/null || true
        stop
        exit 1
    fi
    log "cluster t4plocal up: partition local, node localhost ($(sinfo -h -N -o '%c CPUs, %m MB')); $(cat "$DIR/env")"
}

stop() {
    export SLURM_CONF=$CONF
    if alive slurmctld; then
        scancel --user "$(id -un)" 2>/dev/null || true
        for _ in $(seq 40); do [ -z "$(squeue -h -t PD,R,CG 2>/dev/null)" ] && break; sleep 0.25; done
    fi
    for name in slurmd slurmctld munged; do
        alive "$name" || continue
        local pid; pid=$(cat "$PIDS/$name.pid")
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
        rm -f "$PIDS/$name.pid"
    done
    unlink_default_conf
    log "stopped the cluster of $DIR"
}

case $CMD in
    start) start ;;
    stop) stop ;;
    *) usage ;;
esac
