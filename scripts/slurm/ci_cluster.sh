#!/usr/bin/env bash
# A real one-node Slurm on this machine, for the cluster tests (tests/test_slurm.py) and for trying
# scripts/slurm/train.sbatch by hand. Idempotent: installs Debian's Slurm (slurmctld, slurmd, the
# client; no recommended extras) and munge only when missing, writes the config only when it differs,
# and starts the daemons only when they are not answering. Needs root. Prints "slurm: ready (...)" and exits 0 once the node takes jobs.
#
#   sudo scripts/slurm/ci_cluster.sh          # then: sbatch scripts/slurm/train.sbatch -o runs/slurm
#   scripts/slurm/ci_cluster.sh --stop        # stop the daemons
set -euo pipefail
CONF_DIR=/etc/slurm
SPOOL=/var/spool/slurm

stop_daemons() {  # and wait until they are gone, so that a restart does not find them still exiting
    pkill -x slurmctld || true
    pkill -x slurmd || true
    for _ in $(seq 150); do pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null || return 0; sleep 0.2; done
    pkill -9 -x slurmctld || true
    pkill -9 -x slurmd || true
}
if [ "${1:-}" = --stop ]; then
    stop_daemons
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "slurm: needs root (it installs packages and starts daemons)" >&2
    exit 1
fi
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client munge >/dev/null; } || {
        echo "slurm: could not install slurmctld, slurmd and munge with apt-get" >&2; exit 1; }
fi

# munge: a key, a running daemon.
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
if ! munge -n </dev/null >/dev/null 2>&1; then
    su -s /bin/sh munge -c /usr/sbin/munged
    for _ in $(seq 100); do munge -n </dev/null >/dev/null 2>&1 && break; sleep 0.1; done
fi

# slurm.conf: this host (reached at 127.0.0.1, whatever its name resolves to), all its cores and memory,
# one partition; processes tracked by parent pid
# (no cgroups in a container); requeue allowed; 30 s between SIGTERM and SIGKILL so a checkpoint commits.
NODE=$(hostname -s)
CPUS=$(nproc)
MEM=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
mkdir -p "$CONF_DIR" "$SPOOL/ctld" "$SPOOL/d" /var/log/slurm
chown -R slurm:slurm "$SPOOL" /var/log/slurm
WANT=$(cat <<CONF
ClusterName=chefgenius-ci
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=slurm
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
JobRequeue=1
KillWait=30
MinJobAge=300
ReturnToService=2
SlurmdTimeout=60
InactiveLimit=0
MpiDefault=none
NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=$NODE CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
)
if [ ! -f "$CONF_DIR/slurm.conf" ] || [ "$(cat "$CONF_DIR/slurm.conf")" != "$WANT" ]; then
    printf '%s\n' "$WANT" > "$CONF_DIR/slurm.conf"
    stop_daemons
fi
rm -f "$CONF_DIR/cgroup.conf"

pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld
pgrep -x slurmd >/dev/null || /usr/sbin/slurmd
for _ in $(seq 120); do
    state=$(timeout 5 sinfo -h -n "$NODE" -o %T 2>/dev/null || true)
    case "$state" in
        idle|mixed|allocated) echo "slurm: ready ($NODE, $CPUS CPUs, $(sinfo --version))"; exit 0 ;;
        down*|drain*) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 0.5
done
echo "slurm: the node did not become idle within a minute (sinfo: ${state:-no answer}); see /var/log/slurm/" >&2
exit 1
