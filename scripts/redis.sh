#!/usr/bin/env bash
# Redis for the demo and the tests: Debian's redis-server (installed by scripts/services.sh),
# run as plain processes on 127.0.0.1 with append-only persistence, data under .local/.
#
#   scripts/redis.sh up          the primary, its replica, both ready
#   scripts/redis.sh down        stop both (SHUTDOWN: the AOF is written first)
#   scripts/redis.sh stop|start|kill [replica]   the primary (or the replica); kill is kill -9
#
# Ports from P=OUTBOX_REDIS_PORT (56379): the primary on P, its TLS listener on P+2 (with
# OUTBOX_REDIS_TLS_DIR: server.pem, server.key and ca.pem), the replica (--replicaof the
# primary) on P+1. appendfsync stays at Redis' everysec: a reply means the entry is in the
# AOF's page cache, so a killed server keeps it and only a machine crash can lose the last
# second (`broker.redis.wait_replicas` covers that with a replica).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PORT=${OUTBOX_REDIS_PORT:-56379}
DIR="$ROOT/.local/redis-$PORT"
TLS_DIR=${OUTBOX_REDIS_TLS_DIR:-}

# shellcheck source=lib/process.sh
. "$ROOT/scripts/lib/process.sh"

log() { echo "redis: $*" >&2; }

port_of() {
  case "$1" in
    primary) echo "$PORT" ;;
    replica) echo $((PORT + 1)) ;;
  esac
}

pid_of() {
  local file="$DIR/$1/redis.pid"
  [ -f "$file" ] && kill -0 "$(cat "$file")" 2>/dev/null && cat "$file"
}

start() {
  local role=$1 port
  port=$(port_of "$role")
  if pid_of "$role" >/dev/null; then
    log "$role already running on 127.0.0.1:$port"
    return
  fi
  mkdir -p "$DIR/$role"
  local args=(
    --port "$port" --bind 127.0.0.1 --protected-mode yes
    --dir "$DIR/$role" --pidfile "$DIR/$role/redis.pid" --logfile "$DIR/$role/redis.log"
    --daemonize yes --appendonly yes --save ""
    # DEBUG SLEEP, from loopback only: the tests stall the replica with it.
    --enable-debug-command local
  )
  if [ "$role" = replica ]; then
    args+=(--replicaof 127.0.0.1 "$PORT")
  elif [ -n "$TLS_DIR" ]; then
    mkdir -p "$DIR/tls"
    cp "$TLS_DIR/server.pem" "$TLS_DIR/server.key" "$TLS_DIR/ca.pem" "$DIR/tls/"
    chmod 600 "$DIR/tls/server.key"
    args+=(
      --tls-port $((PORT + 2)) --tls-cert-file "$DIR/tls/server.pem"
      --tls-key-file "$DIR/tls/server.key" --tls-ca-cert-file "$DIR/tls/ca.pem"
      --tls-auth-clients no
    )
  fi
  redis-server "${args[@]}"
  local i
  for i in $(seq 1 100); do
    if redis-cli -p "$port" ping 2>/dev/null | grep -q PONG; then
      if [ "$role" = primary ]; then
        users
      elif ! redis-cli -p "$port" info replication | grep -q 'master_link_status:up'; then
        # Ready once it has synced: a WAIT for one replica counts on it.
        sleep 0.1
        continue
      fi
      log "$role running on 127.0.0.1:$port$([ "$role" = primary ] && [ -n "$TLS_DIR" ] && echo " (TLS on $((PORT + 2)))")"
      return
    fi
    sleep 0.1
  done
  log "$role not ready (PING, replica in sync) within 10 s; see $DIR/$role/redis.log"
  exit 1
}

# A user that may only write to keys named `outbox_allowed:*`, for the tests of a stream the
# server refuses (NOPERM). Idempotent.
users() {
  redis-cli -p "$PORT" ACL SETUSER outbox_limited on '>outbox_limited' resetkeys '~outbox_allowed:*' \
    +@all >/dev/null
}

stop() {
  local role=$1 pid
  pid=$(pid_of "$role") || return 0
  redis-cli -p "$(port_of "$role")" shutdown >/dev/null 2>&1 || kill "$pid" 2>/dev/null || true
  wait_gone "$pid"
  log "$role stopped"
}

kill9() {
  local role=$1 pid
  pid=$(pid_of "$role") || return 0
  kill -9 "$pid"
  wait_gone "$pid"
  log "$role killed (SIGKILL)"
}

case "${1:-}" in
  up)
    start primary
    start replica
    ;;
  down)
    stop replica
    stop primary
    ;;
  start) start "${2:-primary}" ;;
  stop) stop "${2:-primary}" ;;
  kill) kill9 "${2:-primary}" ;;
  *)
    echo "usage: $0 up|down|start|stop|kill [replica]" >&2
    exit 2
    ;;
esac
