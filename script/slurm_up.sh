#!/usr/bin/env bash
# A real two-node SLURM cluster on this machine, for CI and for trying the campaign's --slurm path: as root,
# installs Debian's slurmctld, slurmd, slurmdbd, munge and MariaDB when missing, and starts them without
# systemd. Nodes n1 and n2 are two slurmd (ports 17001, 17002) that both declare every CPU of this machine (the
# same cores: they oversubscribe them); n2 runs in UTS and mount namespaces of its own, so its jobs see `hostname`
# n2 and an empty $SPOOL/mount (a mount that node lacks: the file on-n1-only exists for n1's jobs only). As on
# production clusters: cgroup process tracking (a job's processes are its cgroup's; Slurm signals only a step's
# tasks), tasks bound to the cores their step asked for (task/affinity, CpuBind=cores, cgroup cpusets), memory
# enforced per job (CR_Core_Memory, ConstrainRAMSpace: OUT_OF_MEMORY) and accounting (slurmdbd).
# MaxArraySize=8 and the QOS limit MaxSubmitJobsPerUser=14 are small on purpose: the campaign's chunking and
# submit-limit paths run against them. Stop it with script/slurm_down.sh (by pid file). Idempotent.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "error: script/slurm_up.sh must run as root (it installs and starts daemons)" >&2; exit 2; }
RUN=/run/doublewin-slurm; SPOOL=/var/spool/doublewin-slurm; LOG=/var/log/doublewin-slurm
DB=/var/lib/doublewin-mysql; DBRUN=/run/doublewin-mysql; CONF=/etc/slurm
MARK="# written by doublewin script/slurm_up.sh"
start=$(date +%s)

need=()
for b in slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client munged:munge slurmdbd:slurmdbd mariadbd:mariadb-server; do
  command -v "${b%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${b%%:*}" ] || need+=("${b##*:}")
done
if [ "${#need[@]}" -gt 0 ]; then
  echo "== installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q slurmctld slurmd slurm-client munge slurmdbd mariadb-server >/dev/null
fi
if [ -f "$CONF/slurm.conf" ] && ! grep -qF "$MARK" "$CONF/slurm.conf"; then
  echo "error: $CONF/slurm.conf exists and was not written by this script: not touching a real cluster's config" >&2
  exit 2
fi
for c in cpuset memory freezer devices; do  # cgroup.conf's CgroupPlugin=cgroup/v1 tracks jobs in these
  grep -qE "^cgroup /sys/fs/cgroup/$c cgroup .*\b$c\b" /proc/mounts || {
    echo "error: script/slurm_up.sh needs the cgroup v1 hierarchy /sys/fs/cgroup/$c (SLURM's cgroup/v1 plugin)" >&2
    exit 2; }
done
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
wait_for() {  # seconds, description, test command...
  local n=$1 what=$2; shift 2
  for _ in $(seq $((n * 4))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
  echo "error: $what did not come up in ${n}s (logs in $LOG)" >&2; exit 1
}
mkdir -p "$RUN" "$SPOOL/ctld" "$SPOOL/mount" "$LOG" "$CONF" "$DBRUN"
touch "$SPOOL/mount/on-n1-only"

# munge: Debian made the key; the run folder is ours to make
mkdir -p /run/munge && chown munge:munge /run/munge
[ -f /etc/munge/munge.key ] || mungekey -c -k /etc/munge/munge.key
chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
alive /run/munge/munged.pid || runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid

# MariaDB of our own (port 3307, own datadir) for slurmdbd: job states for sacct, which submitit reads
chown mysql:mysql "$DBRUN"; mkdir -p "$DB"; chown mysql:mysql "$DB" "$LOG"
SOCK="$DBRUN/mysqld.sock"
if ! alive "$DBRUN/mysqld.pid"; then
  [ -d "$DB/mysql" ] || mysql_install_db --no-defaults --user=mysql --datadir="$DB" >"$LOG/mysql-install.log" 2>&1
  setsid runuser -u mysql -- /usr/sbin/mariadbd --no-defaults --datadir="$DB" --port=3307 --bind-address=127.0.0.1 \
    --socket="$SOCK" --pid-file="$DBRUN/mysqld.pid" --log-error="$LOG/mysqld.log" </dev/null >/dev/null 2>&1 &
  wait_for 60 "MariaDB" mysql --no-defaults -S "$SOCK" -u root -e "select 1"
fi
mysql --no-defaults -S "$SOCK" -u root -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'doublewin-ci';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"

mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 20 ))  # each node: 45% of the memory
# each node: this machine's CPUs as two sockets of single-thread cores (hwloc's synthetic topology, which slurmd
# lays out and binds tasks by), so the layout is the same on every host CI runs on
cores=$(( $(nproc) / 2 ))
[ "$cores" -ge 1 ] || { echo "error: script/slurm_up.sh needs at least 2 CPUs (this machine: $(nproc))" >&2; exit 2; }
export HWLOC_SYNTHETIC="package:2 core:$cores pu:1"
cat > "$CONF/slurm.conf.new" <<CONFEOF
$MARK
ClusterName=ci
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=10
MpiDefault=none
ProctrackType=proctrack/cgroup
TaskPlugin=task/affinity,task/cgroup
JobAcctGatherType=jobacct_gather/cgroup
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
AccountingStorageEnforce=associations,limits,qos
JobCompType=jobcomp/none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$(( mem / (2 * cores) ))
SchedulerType=sched/backfill
ReturnToService=2
MinJobAge=600
MaxArraySize=8
SlurmctldPort=6817
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/spool-%n
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd-%n.log
NodeName=n1 NodeHostname=localhost NodeAddr=127.0.0.1 Port=17001 CPUs=$((2 * cores)) Sockets=2 CoresPerSocket=$cores ThreadsPerCore=1 CpuBind=cores RealMemory=$mem State=UNKNOWN
NodeName=n2 NodeHostname=localhost NodeAddr=127.0.0.1 Port=17002 CPUs=$((2 * cores)) Sockets=2 CoresPerSocket=$cores ThreadsPerCore=1 CpuBind=cores RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
CONFEOF
cat > "$CONF/cgroup.conf.new" <<CONFEOF
$MARK
CgroupPlugin=cgroup/v1
ConstrainCores=yes
ConstrainRAMSpace=yes
ConstrainDevices=yes
CONFEOF
# daemons started with other settings (an earlier version of this script) are restarted: process tracking and
# the task plugins are read at start only
changed=0
for f in slurm.conf cgroup.conf; do
  cmp -s "$CONF/$f.new" "$CONF/$f" || changed=1
  mv "$CONF/$f.new" "$CONF/$f"
done
if [ "$changed" = 1 ]; then
  for d in slurmd-n1 slurmd-n2 slurmctld; do
    if alive "$RUN/$d.pid"; then
      echo "== $d runs with other settings: restarting it" >&2
      pid=$(cat "$RUN/$d.pid")
      kill "$pid"
      wait_for 20 "$d to stop" bash -c "! kill -0 $pid"
    fi
  done
fi
cat > "$CONF/slurmdbd.conf" <<CONFEOF
$MARK
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3307
StorageUser=slurm
StoragePass=doublewin-ci
StorageLoc=slurm_acct_db
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
CONFEOF
chmod 600 "$CONF/slurmdbd.conf"

alive "$RUN/slurmdbd.pid" || /usr/sbin/slurmdbd
wait_for 30 "slurmdbd" bash -c "echo > /dev/tcp/127.0.0.1/6819"
alive "$RUN/slurmctld.pid" || /usr/sbin/slurmctld -f "$CONF/slurm.conf"
wait_for 30 "slurmctld" scontrol ping
# the per-user submit limit lives in the accounting database: slurmctld registered cluster ci and root's
# association (QOS normal) when it started
wait_for 30 "the accounting association of root" bash -c "sacctmgr -n -P show assoc user=root format=qos | grep -q normal"
sacctmgr -i modify qos normal set MaxSubmitJobsPerUser=14 >/dev/null
alive "$RUN/slurmd-n1.pid" || /usr/sbin/slurmd -f "$CONF/slurm.conf" -N n1
alive "$RUN/slurmd-n2.pid" || unshare --uts --mount --propagation private sh -c \
  "hostname n2 && mount -t tmpfs -o size=1m doublewin-n2 '$SPOOL/mount' && exec /usr/sbin/slurmd -f '$CONF/slurm.conf' -N n2"
wait_for 60 "nodes n1 and n2" bash -c "[ \"\$(sinfo -h -N -r -o %N | sort -u | tr '\n' ' ')\" = 'n1 n2 ' ]"
echo "SLURM up in $(( $(date +%s) - start )) s: partition debug, nodes n1 n2 (script/slurm_down.sh stops it)" >&2
