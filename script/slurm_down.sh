#!/usr/bin/env bash
# Stop the daemons script/slurm_up.sh started, by their pid files (never by name).
set -uo pipefail
stop() {  # pid file, name
  [ -f "$1" ] || return 0
  local pid; pid=$(cat "$1")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 80); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -0 "$pid" 2>/dev/null && { echo "$2 (pid $pid) ignored SIGTERM for 20 s: SIGKILL" >&2; kill -9 "$pid"; }
  fi
  rm -f "$1"
}
stop /run/doublewin-slurm/slurmd.pid slurmd  # the single node of an earlier version of slurm_up.sh
stop /run/doublewin-slurm/slurmd-n1.pid slurmd-n1
stop /run/doublewin-slurm/slurmd-n2.pid slurmd-n2
stop /run/doublewin-slurm/slurmctld.pid slurmctld
stop /run/doublewin-slurm/slurmdbd.pid slurmdbd
stop /run/doublewin-mysql/mysqld.pid mariadbd
stop /run/munge/munged.pid munged
echo "SLURM stopped" >&2
