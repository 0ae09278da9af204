#!/usr/bin/env bash
# nsqd for the demo and the tests: built once from the pinned release's source with Go, run as
# a plain process on 127.0.0.1, data under .local/.
#
#   scripts/nsq.sh install          build .local/nsq/bin/nsqd unless it is there
#   scripts/nsq.sh up               install, start, ready (GET /ping)
#   scripts/nsq.sh down | stop      stop (SIGTERM: nsqd writes its metadata and queues first)
#   scripts/nsq.sh start            start again
#   scripts/nsq.sh kill             kill -9
#
# Ports from P=OUTBOX_NSQ_PORT (54150): TCP on P, HTTP on P+1. With OUTBOX_NSQ_TLS_DIR
# (server.pem, server.key) nsqd also offers TLS on the TCP port (IDENTIFY with tls_v1; plain
# clients still work), and HTTPS on P+2. --mem-queue-size=0 sends every
# message through nsqd's on-disk queue, so an OK to a PUB means the message is in that queue's
# file, not only in memory. nsqd records how far it wrote only when it syncs, every
# OUTBOX_NSQ_SYNC_EVERY operations (nsqd's default 2500; the fault suite sets 1) or 2 s; a
# kill -9 loses what it wrote since. --max-msg-size is nsqd's default (1 MiB), given
# explicitly: the tests send one over it.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VERSION=v1.3.0
PORT=${OUTBOX_NSQ_PORT:-54150}
BIN="$ROOT/.local/nsq/bin/nsqd"
DIR="$ROOT/.local/nsq-$PORT"
TLS_DIR=${OUTBOX_NSQ_TLS_DIR:-}
SYNC_EVERY=${OUTBOX_NSQ_SYNC_EVERY:-2500}

# shellcheck source=lib/process.sh
. "$ROOT/scripts/lib/process.sh"

log() { echo "nsq: $*" >&2; }

# `go install github.com/nsqio/nsq/apps/nsqd@v1.3.0` does not work: it reads the module's
# version list for a deprecation check (the proxy answers 403 for this module), and it refuses
# modules whose go.mod has replace directives (nsq's has one). So the pinned module is fetched
# (checked against the checksum database) and built as the main module, its own go.sum and
# replace directive in force.
install() {
  if [ -x "$BIN" ]; then
    return
  fi
  command -v go >/dev/null 2>&1 || { log "Go is needed to build nsqd"; exit 1; }
  log "building nsqd $VERSION"
  local source src
  source=$(cd /tmp && go mod download -json "github.com/nsqio/nsq@$VERSION" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [ -d "$source" ] || { log "go mod download found no source for nsq $VERSION"; exit 1; }
  src="$ROOT/.local/nsq/src-$VERSION"
  # A copy left by an interrupted build may still be read-only, as the module cache is.
  if [ -d "$src" ]; then chmod -R u+w "$src"; fi
  rm -rf "$src"
  mkdir -p "$(dirname "$src")"
  cp -r "$source" "$src"
  chmod -R u+w "$src"
  (cd "$src" && GOBIN="$ROOT/.local/nsq/bin" go install ./apps/nsqd)
  log "built $("$BIN" --version)"
}

pid_of() {
  local file="$DIR/nsqd.pid"
  [ -f "$file" ] && kill -0 "$(cat "$file")" 2>/dev/null && cat "$file"
}

# nsqd's HTTP /ping, in bash: curl is not on every machine.
ping() {
  timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$((PORT + 1)) &&
    printf 'GET /ping HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3 && grep -q '^OK' <&3" 2>/dev/null
}

start() {
  install
  if pid_of >/dev/null; then
    log "nsqd already running on 127.0.0.1:$PORT"
    return
  fi
  mkdir -p "$DIR/data"
  local tls=()
  if [ -n "$TLS_DIR" ]; then
    mkdir -p "$DIR/tls"
    cp "$TLS_DIR/server.pem" "$TLS_DIR/server.key" "$DIR/tls/"
    chmod 600 "$DIR/tls/server.key"
    # nsqd also serves HTTPS when it has a certificate, on 0.0.0.0:4152 unless told: one
    # port for every instance, on every interface.
    tls=(--tls-cert="$DIR/tls/server.pem" --tls-key="$DIR/tls/server.key"
      --https-address="127.0.0.1:$((PORT + 2))")
  fi
  setsid "$BIN" \
    --tcp-address="127.0.0.1:$PORT" --http-address="127.0.0.1:$((PORT + 1))" \
    --broadcast-address=127.0.0.1 --data-path="$DIR/data" \
    --mem-queue-size=0 --sync-every="$SYNC_EVERY" --sync-timeout=2s --max-msg-size=1048576 \
    "${tls[@]}" \
    >>"$DIR/nsqd.log" 2>&1 </dev/null &
  echo $! >"$DIR/nsqd.pid"
  local i
  for i in $(seq 1 100); do
    if ping; then
      log "nsqd running on 127.0.0.1:$PORT (HTTP on $((PORT + 1)))$([ -n "$TLS_DIR" ] && echo ", TLS offered")"
      return
    fi
    pid_of >/dev/null || break
    sleep 0.1
  done
  log "nsqd not ready within 10 s; see $DIR/nsqd.log"
  exit 1
}

stop() {
  local pid
  pid=$(pid_of) || return 0
  kill "$pid"
  wait_gone "$pid"
  log "nsqd stopped"
}

kill9() {
  local pid
  pid=$(pid_of) || return 0
  kill -9 "$pid"
  wait_gone "$pid"
  log "nsqd killed (SIGKILL)"
}

case "${1:-}" in
  install) install ;;
  up | start) start ;;
  down | stop) stop ;;
  kill) kill9 ;;
  *)
    echo "usage: $0 install|up|down|start|stop|kill" >&2
    exit 2
    ;;
esac
