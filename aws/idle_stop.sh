#!/bin/bash
# Stops this instance once the GPU, the CPUs and SSH have all been idle for IDLE_MINUTES.
# Installed as /usr/local/sbin/medimg-idle-stop and run every minute by medimg-idle-stop.timer;
# settings come from /etc/medimg/idle-stop.env. The instance launches with shutdown
# behaviour "stop", so shutting down stops it (disk kept) rather than terminating it.
set -euo pipefail

IDLE_MINUTES="${IDLE_MINUTES:-30}"
GPU_BUSY_PERCENT="${GPU_BUSY_PERCENT:-5}"
CPU_BUSY_LOAD="${CPU_BUSY_LOAD:-1.0}"
STATE_FILE="${STATE_FILE:-/run/medimg/idle-since}"
KEEP_AWAKE_FILE="${KEEP_AWAKE_FILE:-/etc/medimg/keep-awake}"
LOADAVG_FILE="${LOADAVG_FILE:-/proc/loadavg}"
SHUTDOWN_COMMAND="${SHUTDOWN_COMMAND:-shutdown -h now}"

# Prints why the machine counts as busy, or nothing when it is idle.
busy_reason() {
  if [ -e "$KEEP_AWAKE_FILE" ]; then
    echo "keep-awake file $KEEP_AWAKE_FILE exists"
    return
  fi
  # SSH tunnels (ssh -N -L) have no terminal and so no utmp entry: count TCP connections instead of `who`.
  local ssh_connections
  ssh_connections=$(ss -Htn state established '( sport = :22 )' | wc -l)
  if [ "$ssh_connections" -gt 0 ]; then
    echo "$ssh_connections ssh connection(s)"
    return
  fi
  # A driver that fails to answer counts as an idle GPU, so a broken host still stops.
  local utilization
  utilization=$(nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits 2>/dev/null | tr -dc '0-9\n' | sort -n | tail -n 1 || true)
  if [ -n "$utilization" ] && [ "$utilization" -gt "$GPU_BUSY_PERCENT" ]; then
    echo "GPU utilisation ${utilization}%"
    return
  fi
  # The 5-minute load average keeps CPU-only work (dataset preparation, evaluation) alive.
  local load
  load=$(cut -d ' ' -f 2 "$LOADAVG_FILE")
  if awk -v load="$load" -v limit="$CPU_BUSY_LOAD" 'BEGIN { exit !(load > limit) }'; then
    echo "5-minute load average $load"
    return
  fi
}

main() {
  if [ "$IDLE_MINUTES" -le 0 ]; then
    exit 0
  fi
  local now reason idle_since idle_seconds
  now=$(date +%s)
  reason=$(busy_reason)
  mkdir -p "$(dirname "$STATE_FILE")"
  if [ -n "$reason" ]; then
    rm -f "$STATE_FILE"
    exit 0
  fi
  if [ ! -s "$STATE_FILE" ]; then
    echo "$now" >"$STATE_FILE"
    exit 0
  fi
  idle_since=$(cat "$STATE_FILE")
  idle_seconds=$((now - idle_since))
  if [ "$idle_seconds" -ge $((IDLE_MINUTES * 60)) ]; then
    logger -t medimg-idle-stop "idle for $((idle_seconds / 60)) minutes: stopping the instance" || true
    rm -f "$STATE_FILE"
    # The command is a word list on purpose (e.g. "shutdown -h now").
    # shellcheck disable=SC2086
    $SHUTDOWN_COMMAND
  fi
}

main "$@"
