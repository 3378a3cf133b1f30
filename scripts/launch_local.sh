#!/usr/bin/env bash
# Starts N ranks of a command on this machine, as torchrun would, for machines without
# torchrun (PyPI's torch):
#
#   scripts/launch_local.sh 2 build/debian/pal-train --config configs/tiny/stage1_align.yaml
#
# Each process gets RANK, LOCAL_RANK (0..N-1), WORLD_SIZE and LOCAL_WORLD_SIZE (N),
# MASTER_ADDR (127.0.0.1 unless set) and MASTER_PORT (a free port unless set); rank r's
# output lines are prefixed with "[r] " (LAUNCH_LOCAL_PREFIX=0: unprefixed).
# When one rank exits with a non-zero code, the others (and their children) get SIGTERM (then SIGKILL after
# LAUNCH_LOCAL_GRACE_S, default 30 s). The exit code is the first non-zero one a rank
# returned (128+signal for a rank killed by a signal), else 0. SIGINT / SIGTERM to this
# script are passed on to every rank.
set -u -o pipefail

usage() {
  echo "usage: $0 NPROC COMMAND [ARGS...]   (NPROC: ranks on this machine, >= 1)" >&2
  exit 2
}
[[ $# -ge 2 ]] || usage
nproc_arg=$1
shift
if ! [[ $nproc_arg =~ ^[0-9]+$ ]] || ((nproc_arg < 1)); then
  echo "$0: NPROC=$nproc_arg is not a positive integer" >&2
  usage
fi
grace=${LAUNCH_LOCAL_GRACE_S:-30}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null ||
    echo $((29500 + RANDOM % 2000))
}

export MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
export MASTER_PORT=${MASTER_PORT:-$(free_port)}
export WORLD_SIZE=$nproc_arg LOCAL_WORLD_SIZE=$nproc_arg

# Each rank in a process group of its own (setsid: same pid, not a group leader before),
# so that stopping a rank also stops what it started (a shell's children).
pids=()
for ((r = 0; r < nproc_arg; r++)); do
  if [[ ${LAUNCH_LOCAL_PREFIX:-1} == 1 ]]; then
    # The rank's own process is the one in pids (exec), its output goes through sed.
    RANK=$r LOCAL_RANK=$r setsid bash -c 'exec "$@"' rank "$@" > >(sed -u "s/^/[$r] /") 2> >(sed -u "s/^/[$r] /" >&2) &
  else
    RANK=$r LOCAL_RANK=$r setsid "$@" &
  fi
  pids+=($!)
done

stop_all() {
  local sig=$1
  for pid in "${pids[@]}"; do kill "-$sig" -- "-$pid" 2>/dev/null || kill "-$sig" "$pid" 2>/dev/null; done
}
trap 'stop_all TERM' TERM
trap 'stop_all INT' INT

first_code=0
running=$nproc_arg
declare -A done_pids=()
killer=""
while ((running > 0)); do
  # Poll: `wait -n` misses a rank that bash has already reaped in the meantime; `wait PID`
  # returns the saved exit code of one that has ended.
  sleep 0.1
  for ((r = 0; r < nproc_arg; r++)); do
    pid=${pids[$r]}
    [[ -n ${done_pids[$pid]:-} ]] && continue
    kill -0 "$pid" 2>/dev/null && continue
    wait "$pid"
    code=$?
    done_pids[$pid]=1
    running=$((running - 1))
    if ((code != 0 && first_code == 0)); then
      first_code=$code
      echo "launch_local.sh: rank $r (pid $pid) exited with $code; stopping the others" >&2
      stop_all TERM
      (
        sleep "$grace" &
        trap 'kill $! 2>/dev/null; exit 0' TERM
        wait $!
        for p in "${pids[@]}"; do kill -KILL -- "-$p" 2>/dev/null; done
      ) </dev/null >/dev/null 2>&1 &
      killer=$!
    fi
  done
done
[[ -n $killer ]] && kill "$killer" 2>/dev/null
wait 2>/dev/null
exit "$first_code"
