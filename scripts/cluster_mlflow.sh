#!/usr/bin/env bash
# The cluster's MLflow tracking server, on the head node (run by head_setup_commands).
#
#   bash ~/parcae/scripts/cluster_mlflow.sh start   # returns once the server answers
#   bash ~/parcae/scripts/cluster_mlflow.sh stop
#
# It serves ~/reports/mlflow.db and ~/reports/mlartifacts (beside the sweeps' reports, so one
# `ray rsync-down` of ~/reports/ brings both) on port 5000 of the head's private address, the
# address Ray itself uses; never 0.0.0.0. A start finds a running server by its port, not by
# its process name (a name pattern also matches the shell that runs it). It stops by itself
# once Ray has been down on the head for GRACE seconds (`ray down` runs `ray stop` there; `ray
# up` restarts Ray within seconds), or when Ray never came up within 10 minutes.
#
# Basic authentication: where ~/.mlflow/credentials exists on the head (mount it with
# file_mounts, see the cluster files), the server starts with `--app-name basic-auth`, its admin
# password taken from the file as MLFLOW_AUTH_ADMIN_PASSWORD; the trials log in with the same file.
set -euo pipefail

PORT=5000
RAY_PORT=6379  # the head's GCS port: head_start_ray_commands' `ray start --head --port=6379`
GRACE=45
NEVER_UP=600
WORKERS=2     # not MLflow's 4 (with its job runner: 16 processes, ~3 GiB): a sweep needs few
STARTUP=300   # seconds the first start may take (imports on a busy head)
REPORTS="$HOME/reports"
PIDFILE="$REPORTS/mlflow-server.pid"
LOG="$REPORTS/mlflow-server.log"
CREDENTIALS="$HOME/.mlflow/credentials"

answers() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
node_ip() { python3 -c "import ray.util; print(ray.util.get_node_ip_address())"; }

serve() {  # runs detached, in its own session: the server, then the watch on Ray
  local host=$1 auth=()
  asked=0
  trap 'asked=1' TERM  # `stop`: end the server the same way
  if [[ -f $CREDENTIALS ]]; then
    MLFLOW_AUTH_ADMIN_PASSWORD=$(sed -n 's/^mlflow_tracking_password *= *//p' "$CREDENTIALS")
    export MLFLOW_AUTH_ADMIN_PASSWORD
    auth=(--app-name basic-auth)
  fi
  # MLflow's job runner (GenAI jobs, 7 more processes) is of no use to a sweep
  MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false python3 -m mlflow server --host "$host" \
    --port "$PORT" --workers "$WORKERS" "${auth[@]}" \
    --backend-store-uri "sqlite:///$REPORTS/mlflow.db" \
    --artifacts-destination "$REPORTS/mlartifacts" &
  local server=$! seen=0 down=0
  while kill -0 "$server" 2>/dev/null; do
    if answers "$host" "$RAY_PORT"; then seen=1 down=0; else down=$((down + 2)); fi
    if (( asked || (seen && down >= GRACE) || down >= NEVER_UP )); then
      echo "cluster_mlflow: stopping MLflow (asked: $asked; Ray down for ${down}s)"
      break
    fi
    sleep 2
  done
  rm -f "$PIDFILE"
  # TERM, then KILL the whole group: uvicorn's supervisor restarts workers that end alone
  kill -TERM -- "-$$" 2>/dev/null || true
  for _ in $(seq 10); do
    kill -0 "$server" 2>/dev/null || break
    sleep 1
  done
  kill -KILL -- "-$$"
}

start() {
  local host
  host=$(node_ip)
  if answers "$host" "$PORT"; then
    echo "cluster_mlflow: MLflow already answers on $host:$PORT"
    return
  fi
  mkdir -p "$REPORTS" && chmod 700 "$REPORTS"
  setsid nohup bash "$0" serve "$host" >"$LOG" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  for _ in $(seq "$STARTUP"); do
    if answers "$host" "$PORT"; then
      echo "cluster_mlflow: MLflow serves $REPORTS on http://$host:$PORT (log: $LOG)"
      return
    fi
    kill -0 "$(cat "$PIDFILE")" 2>/dev/null || break
    sleep 1
  done
  echo "cluster_mlflow: the MLflow server did not start; the end of $LOG:" >&2
  tail -n 20 "$LOG" >&2
  exit 1
}

stop() {
  if [[ ! -f $PIDFILE ]]; then
    echo "cluster_mlflow: not running"
    return
  fi
  local watcher
  watcher=$(cat "$PIDFILE")
  kill -TERM "$watcher" 2>/dev/null || true
  for _ in $(seq 30); do
    if ! kill -0 "$watcher" 2>/dev/null; then  # the watcher ends last, with its group
      echo "cluster_mlflow: stopped"
      return
    fi
    sleep 1
  done
  echo "cluster_mlflow: MLflow (process group $watcher) did not stop" >&2
  exit 1
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  serve) serve "$2" ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
