#!/usr/bin/env bash
# Starts (or stops) the local Postgres, RabbitMQ, Apache Kafka, Redis and nsqd that the demo and
# the tests use.
# Everything runs as plain processes bound to 127.0.0.1 on non-default ports, with data under
# .local/ in the repository. Idempotent: `up` installs what is missing and starts what is not
# running, and only the services it is given.
#
#   scripts/services.sh up [SERVICE...]   install if needed, start, print the environment to use;
#                      SERVICE: postgres, rabbitmq, kafka, redis, nsq, promtool (installed,
#                      not started);
#                      all of them without an argument
#   scripts/services.sh down   stop them
#   scripts/services.sh env    print the environment (export lines)
#   scripts/services.sh kafka-log [N]   the path of the Kafka broker's log (node N of the cluster)
#   scripts/services.sh stop|start|kill postgres|rabbitmq|kafka|redis|nsq [N|replica]   one
#                      service, one Kafka broker of the cluster (the fault-injection suite) or
#                      the Redis replica; kill (kill -9) is kafka, redis and nsq only
#   scripts/services.sh drop-scratch-dbs [t|bench]   drop the databases earlier test (t_<hex>)
#                      or bench (bench_<hex>) runs left; both kinds without an argument
#
# OUTBOX_PG_PORT / OUTBOX_AMQP_PORT / OUTBOX_KAFKA_PORT / OUTBOX_REDIS_PORT / OUTBOX_NSQ_PORT
# choose other ports; a service on a
# non-default port keeps its data in its own directory, so two sets never share state.
# Kafka is Apache Kafka from Maven Central, run by scripts/kafka.sh (read it for its ports):
# one broker, or with OUTBOX_KAFKA_CLUSTER=1 three (the fault suite). OUTBOX_KAFKA_ADVERTISED_PORT
# (OUTBOX_KAFKA_ADVERTISED_PORTS="a,b,c" for the cluster) is the port each broker tells clients
# to connect to (default: its own; the fault suite points them at TCP proxies). Redis is Debian's
# redis-server, a primary and its replica, run by scripts/redis.sh (read it for its ports). nsqd
# is built with Go from the pinned NSQ release and run by scripts/nsq.sh (read it for its ports).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# The service users may not be allowed into the caller's directory; every path below is absolute.
cd /
LOCAL="$ROOT/.local"
# shellcheck source=lib/ports.sh
. "$ROOT/scripts/lib/ports.sh"
PG_PORT=${OUTBOX_PG_PORT:-54329}
AMQP_PORT=${OUTBOX_AMQP_PORT:-56729}
RABBIT_DIST_PORT=$((AMQP_PORT + 1))
# RabbitMQ's TLS (amqps) listener. +5, not +10: other instances are commonly started ten ports apart.
AMQPS_PORT=${OUTBOX_AMQPS_PORT:-$((AMQP_PORT + 5))}
KAFKA_PORT=${OUTBOX_KAFKA_PORT:-59092}
export OUTBOX_KAFKA_PORT=$KAFKA_PORT
KAFKA_CLUSTER=${OUTBOX_KAFKA_CLUSTER:-0}
REDIS_PORT=${OUTBOX_REDIS_PORT:-56379}
export OUTBOX_REDIS_PORT=$REDIS_PORT
NSQ_PORT=${OUTBOX_NSQ_PORT:-54150}
export OUTBOX_NSQ_PORT=$NSQ_PORT
RABBIT_NODE="outbox-relay-${AMQP_PORT}@localhost"
# Set by choose_state_dir once the service users exist.
PG_DIR=""
RABBIT_DIR=""
TLS_DIR=""

log() { echo "services: $*" >&2; }

pg_bin() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  echo "$dir"
}

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    log "apt-get update"
    # Another apt-get (unattended upgrades, a parallel install) may hold the lock: wait for it.
    apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null
    apt_updated=1
  fi
  log "installing $*"
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq "$@" >/dev/null
}

# The services run as the postgres and rabbitmq users, which must be able to reach their data.
# A clone under a private directory (such as /root) is not reachable by them; then the data
# lives in /var/tmp under a name derived from the clone's path, linked from .local/services.
choose_state_dir() {
  mkdir -p "$LOCAL"
  local state="$LOCAL"
  if ! reachable_by postgres || ! reachable_by rabbitmq; then
    state="/var/tmp/outbox-relay-$(printf '%s' "$ROOT" | md5sum | cut -c1-12)"
    mkdir -p "$state"
    chmod 755 "$state"
    ln -sfn "$state" "$LOCAL/services"
  fi
  PG_DIR="$state/pg$(port_suffix "$PG_PORT" 54329)"
  RABBIT_DIR="$state/rabbitmq$(port_suffix "$AMQP_PORT" 56729)"
  TLS_DIR="$state/tls"
}

# A user that does not exist yet (its service not installed) has nothing to reach.
reachable_by() {
  ! id "$1" >/dev/null 2>&1 || su "$1" -s /bin/sh -c "cd '$LOCAL'" 2>/dev/null
}

# Empty for the default port (the directories keep their historical names), else "-PORT".
port_suffix() {
  if [ "$1" != "$2" ]; then
    echo "-$1"
  fi
}

# A local CA and a server certificate for 127.0.0.1 / localhost that Postgres and RabbitMQ
# serve (and the tests' TLS proxy), plus a second, unrelated CA: a client trusting only that
# one must refuse the servers. Generated once; EC P-256 keys, valid ten years.
tls_up() {
  mkdir -p "$TLS_DIR"
  chmod 755 "$TLS_DIR"
  if [ -f "$TLS_DIR/server.pem" ] && [ -f "$TLS_DIR/other-ca.pem" ]; then
    tls_wrong_host
    return
  fi
  log "generating a local CA and server certificate in $TLS_DIR"
  local tmp
  tmp=$(mktemp -d)
  local name
  for name in ca other-ca; do
    openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -days 3650 \
      -subj "/CN=outbox-relay test $name" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -keyout "$tmp/$name.key" -out "$tmp/$name.pem" 2>/dev/null
  done
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -subj "/CN=localhost" \
    -keyout "$tmp/server.key" -out "$tmp/server.csr" 2>/dev/null
  printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" > "$tmp/server.ext"
  openssl x509 -req -in "$tmp/server.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" -CAcreateserial \
    -days 3650 -extfile "$tmp/server.ext" -out "$tmp/server.pem" 2>/dev/null
  chmod 644 "$tmp"/*.pem
  chmod 600 "$tmp"/*.key
  # server.pem last: its presence means the set is complete.
  mv "$tmp/ca.pem" "$tmp/ca.key" "$tmp/other-ca.pem" "$tmp/other-ca.key" "$tmp/server.key" "$TLS_DIR/"
  mv "$tmp/server.pem" "$TLS_DIR/"
  rm -rf "$tmp"
  tls_wrong_host
}

# A certificate from the right CA for a name that is not 127.0.0.1 or localhost: the tests'
# TLS proxy presents it to check that clients verify the host name, not only the chain.
tls_wrong_host() {
  [ -f "$TLS_DIR/wrong-host.pem" ] && return
  local tmp
  tmp=$(mktemp -d)
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -subj "/CN=elsewhere.invalid" \
    -keyout "$tmp/wrong-host.key" -out "$tmp/wrong-host.csr" 2>/dev/null
  printf '%s\n' "subjectAltName=DNS:elsewhere.invalid" "extendedKeyUsage=serverAuth" > "$tmp/wrong-host.ext"
  openssl x509 -req -in "$tmp/wrong-host.csr" -CA "$TLS_DIR/ca.pem" -CAkey "$TLS_DIR/ca.key" \
    -CAcreateserial -days 3650 -extfile "$tmp/wrong-host.ext" -out "$tmp/wrong-host.pem" 2>/dev/null
  chmod 644 "$tmp/wrong-host.pem"
  chmod 600 "$tmp/wrong-host.key"
  mv "$tmp/wrong-host.key" "$TLS_DIR/"
  mv "$tmp/wrong-host.pem" "$TLS_DIR/"
  rm -rf "$tmp"
}

# Each server gets its own copy of the key: Postgres refuses a key file other users can read.
tls_copy_for() {
  local user=$1 dir=$2
  mkdir -p "$dir"
  cp "$TLS_DIR/server.pem" "$TLS_DIR/server.key" "$TLS_DIR/ca.pem" "$dir/"
  chown -R "$user:$user" "$dir"
  chmod 700 "$dir"
  chmod 600 "$dir/server.key"
}

# Installs what the given services need: Debian packages for Postgres, RabbitMQ and promtool
# (the tests check /metrics with it), the broker's jars from Maven Central for Kafka.
install_missing() {
  if ! command -v openssl >/dev/null 2>&1; then
    apt_install openssl
  fi
  local service
  for service in "$@"; do
    case "$service" in
      postgres)
        if [ -z "$(pg_bin)" ] || [ ! -x "$(pg_bin)/initdb" ]; then
          apt_install postgresql
        fi
        ;;
      rabbitmq)
        if [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
          apt_install rabbitmq-server
        fi
        ;;
      promtool)
        if ! command -v promtool >/dev/null 2>&1; then
          apt_install prometheus
        fi
        ;;
      kafka) "$ROOT/scripts/kafka.sh" install ;;
      redis)
        if ! command -v redis-server >/dev/null 2>&1; then
          apt_install redis-server
        fi
        ;;
      nsq) "$ROOT/scripts/nsq.sh" install ;;
      *)
        echo "unknown service: $service (postgres, rabbitmq, kafka, redis, nsq, promtool)" >&2
        exit 2
        ;;
    esac
  done
}

port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

kafka() {
  "$ROOT/scripts/kafka.sh" "$@"
}

redis() {
  OUTBOX_REDIS_TLS_DIR=$TLS_DIR "$ROOT/scripts/redis.sh" "$@"
}

nsq() {
  OUTBOX_NSQ_TLS_DIR=$TLS_DIR "$ROOT/scripts/nsq.sh" "$@"
}

kafka_up() {
  if [ "$KAFKA_CLUSTER" = 1 ]; then
    kafka up-cluster
  else
    OUTBOX_KAFKA_TLS_DIR=$TLS_DIR kafka up
  fi
}

kafka_bootstrap() {
  if [ "$KAFKA_CLUSTER" = 1 ]; then
    echo "127.0.0.1:$KAFKA_PORT,127.0.0.1:$((KAFKA_PORT + 2)),127.0.0.1:$((KAFKA_PORT + 4))"
  else
    echo "127.0.0.1:$KAFKA_PORT"
  fi
}

# The brokers' inter-broker listeners (scripts/kafka.sh: client port + 2000). They advertise
# themselves, not a proxy: the fault suite's own clients reach the cluster around its proxies.
kafka_internal_bootstrap() {
  local list="" p
  for p in $(kafka_bootstrap | tr , ' '); do
    list="${list:+$list,}127.0.0.1:$((${p#127.0.0.1:} + 2000))"
  done
  echo "$list"
}

pg_up() {
  local bin
  bin=$(pg_bin)
  mkdir -p "$PG_DIR"
  chown postgres:postgres "$PG_DIR"
  if [ ! -f "$PG_DIR/data/PG_VERSION" ]; then
    log "initdb in $PG_DIR/data"
    su postgres -s /bin/sh -c "'$bin/initdb' -D '$PG_DIR/data' -A trust -U postgres --no-sync -E UTF8" >/dev/null
  fi
  if su postgres -s /bin/sh -c "'$bin/pg_ctl' -D '$PG_DIR/data' status" >/dev/null 2>&1; then
    log "postgres already running on 127.0.0.1:$PG_PORT"
    if [ ! -f "$PG_DIR/tls/server.pem" ]; then
      log "WARNING: it was started without TLS by an older services.sh; restart it (down, up) for the TLS tests"
    fi
    return
  fi
  mkdir -p "$PG_DIR/socket"
  chown postgres:postgres "$PG_DIR/socket"
  tls_copy_for postgres "$PG_DIR/tls"
  # max_connections is raised because the test suite runs many relays and pools in parallel.
  # ssl=on offers TLS; plain connections are still accepted (pg_hba has host, not hostssl).
  su postgres -s /bin/sh -c "'$bin/pg_ctl' -D '$PG_DIR/data' -l '$PG_DIR/postgres.log' -w -t 60 start \
    -o \"-p $PG_PORT -k '$PG_DIR/socket' -c listen_addresses=127.0.0.1 -c max_connections=400 -c fsync=on \
    -c ssl=on -c ssl_cert_file='$PG_DIR/tls/server.pem' -c ssl_key_file='$PG_DIR/tls/server.key'\"" >/dev/null
  log "postgres running on 127.0.0.1:$PG_PORT (TLS offered)"
}

pg_down() {
  local bin
  bin=$(pg_bin)
  if [ -f "$PG_DIR/data/PG_VERSION" ] && [ -n "$bin" ]; then
    su postgres -s /bin/sh -c "'$bin/pg_ctl' -D '$PG_DIR/data' -m fast -w stop" >/dev/null 2>&1 || true
    log "postgres stopped"
  fi
}

# Tests keep their databases (t_<hex>) so a failure can be inspected afterwards. They pile up
# over runs, and each costs Postgres work (autovacuum visits every database), which skews the
# bench; test.sh drops the tests' before it starts, bench.sh both kinds (a bench run wants the
# machine to itself anyway).
pg_drop_scratch() {
  local bin db dbs prefix
  case "${1:-}" in
    t | bench) prefix=$1 ;;
    '') prefix='t|bench' ;;
    *)
      echo "usage: $0 drop-scratch-dbs [t|bench]" >&2
      exit 2
      ;;
  esac
  bin=$(pg_bin)
  # Listed first, so that a failing psql stops the script (set -e does not see into a for list).
  dbs=$("$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -Atc \
    "SELECT datname FROM pg_database WHERE datname ~ '^($prefix)_[0-9a-f]{32}$'")
  for db in $dbs; do
    "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -qc \
      "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null
  done
}

rabbit_env() {
  cat <<ENV
HOME='$RABBIT_DIR/home' \
RABBITMQ_NODENAME='$RABBIT_NODE' \
RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
RABBITMQ_NODE_PORT=$AMQP_PORT \
RABBITMQ_DIST_PORT=$RABBIT_DIST_PORT \
RABBITMQ_MNESIA_BASE='$RABBIT_DIR/mnesia' \
RABBITMQ_LOG_BASE='$RABBIT_DIR/log' \
RABBITMQ_PID_FILE='$RABBIT_DIR/rabbit.pid' \
RABBITMQ_ENABLED_PLUGINS_FILE='$RABBIT_DIR/enabled_plugins' \
RABBITMQ_CONFIG_FILE='$RABBIT_DIR/rabbitmq' \
ERL_EPMD_ADDRESS=127.0.0.1 \
RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1}'
ENV
}

rabbitmqctl() {
  su rabbitmq -s /bin/sh -c "$(rabbit_env | tr -d '\\\n') /usr/lib/rabbitmq/bin/rabbitmqctl -n '$RABBIT_NODE' $*"
}

rabbit_up() {
  mkdir -p "$RABBIT_DIR/home" "$RABBIT_DIR/mnesia" "$RABBIT_DIR/log"
  [ -f "$RABBIT_DIR/enabled_plugins" ] || echo '[].' > "$RABBIT_DIR/enabled_plugins"
  # Alarms tuned for tests that fill queues quickly; a 1 MiB message limit so the oversized
  # message path can be tested.
  cat > "$RABBIT_DIR/rabbitmq.conf" <<CONF
loopback_users = none
disk_free_limit.absolute = 50MB
vm_memory_high_watermark.relative = 0.6
max_message_size = 1048576
listeners.ssl.1 = 127.0.0.1:$AMQPS_PORT
ssl_options.cacertfile = $RABBIT_DIR/tls/ca.pem
ssl_options.certfile = $RABBIT_DIR/tls/server.pem
ssl_options.keyfile = $RABBIT_DIR/tls/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
CONF
  tls_copy_for rabbitmq "$RABBIT_DIR/tls"
  chown -R rabbitmq:rabbitmq "$RABBIT_DIR"
  if [ -f "$RABBIT_DIR/rabbit.pid" ] && kill -0 "$(cat "$RABBIT_DIR/rabbit.pid")" 2>/dev/null; then
    log "rabbitmq already running on 127.0.0.1:$AMQP_PORT"
    if ! port_open "$AMQPS_PORT"; then
      log "WARNING: no amqps listener on $AMQPS_PORT (started by an older services.sh); restart it (down, up) for the TLS tests"
    fi
    rabbit_users
    return
  fi
  rm -f "$RABBIT_DIR/rabbit.pid"
  su rabbitmq -s /bin/sh -c "$(rabbit_env | tr -d '\\\n') nohup /usr/lib/rabbitmq/bin/rabbitmq-server >'$RABBIT_DIR/server.out' 2>&1 &"
  local i
  for i in $(seq 1 60); do
    [ -f "$RABBIT_DIR/rabbit.pid" ] && break
    sleep 1
  done
  if ! rabbitmqctl wait "'$RABBIT_DIR/rabbit.pid'" --timeout 90 >/dev/null; then
    log "rabbitmq did not start; see $RABBIT_DIR/server.out and $RABBIT_DIR/log"
    exit 1
  fi
  rabbit_users
  log "rabbitmq running on 127.0.0.1:$AMQP_PORT (amqps on $AMQPS_PORT)"
}

# A user that may only publish to exchanges named `outbox_allowed.*` (configure and read:
# nothing), for the tests of a destination the broker refuses. Idempotent.
rabbit_users() {
  if ! rabbitmqctl list_users --quiet --no-table-headers 2>/dev/null | grep -q '^outbox_limited[[:space:]]'; then
    rabbitmqctl add_user outbox_limited outbox_limited >/dev/null
  fi
  rabbitmqctl set_permissions -p / outbox_limited "'^\$'" "'^outbox_allowed\\.'" "'^\$'" >/dev/null
}

rabbit_down() {
  if [ -f "$RABBIT_DIR/rabbit.pid" ] && kill -0 "$(cat "$RABBIT_DIR/rabbit.pid")" 2>/dev/null; then
    rabbitmqctl stop "'$RABBIT_DIR/rabbit.pid'" >/dev/null 2>&1 || kill "$(cat "$RABBIT_DIR/rabbit.pid")" || true
    log "rabbitmq stopped"
  fi
}

print_env() {
  cat <<ENV
export OUTBOX_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:$PG_PORT/postgres
export OUTBOX_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:$AMQP_PORT/%2f
export OUTBOX_TEST_AMQPS_URL=amqps://guest:guest@127.0.0.1:$AMQPS_PORT/%2f
export OUTBOX_TEST_KAFKA_BOOTSTRAP=$(kafka_bootstrap)
export OUTBOX_TEST_KAFKA_INTERNAL_BOOTSTRAP=$(kafka_internal_bootstrap)
export OUTBOX_TEST_KAFKA_TLS_BOOTSTRAP=127.0.0.1:$((KAFKA_PORT + 3000))
export OUTBOX_TEST_KAFKA_WRONG_HOST_BOOTSTRAP=127.0.0.1:$((KAFKA_PORT + 3001))
export OUTBOX_TEST_REDIS_URL=redis://127.0.0.1:$REDIS_PORT
export OUTBOX_TEST_REDIS_REPLICA_URL=redis://127.0.0.1:$((REDIS_PORT + 1))
export OUTBOX_TEST_REDISS_URL=rediss://127.0.0.1:$((REDIS_PORT + 2))
export OUTBOX_TEST_NSQD_ADDRESS=127.0.0.1:$NSQ_PORT
export OUTBOX_TEST_NSQD_BIN=$LOCAL/nsq/bin/nsqd
export OUTBOX_TEST_TLS_DIR=$TLS_DIR
export OUTBOX_TEST_CA=$TLS_DIR/ca.pem
export OUTBOX_TEST_OTHER_CA=$TLS_DIR/other-ca.pem
ENV
}

case "${1:-up}" in
  up)
    shift || true
    services=("$@")
    if [ ${#services[@]} = 0 ]; then
      services=(postgres rabbitmq kafka redis nsq promtool)
    fi
    install_missing "${services[@]}"
    choose_state_dir
    # Every port of the set, the Kafka cluster's (and the fault suite's proxies') included.
    reserve_ports "$PG_PORT" "$AMQP_PORT-$((AMQP_PORT + 5))" "$AMQPS_PORT" \
      "$KAFKA_PORT-$((KAFKA_PORT + 5))" "$((KAFKA_PORT + 2000))-$((KAFKA_PORT + 2005))" \
      "$((KAFKA_PORT + 3000))-$((KAFKA_PORT + 3001))" "$((KAFKA_PORT + 4000))-$((KAFKA_PORT + 4005))" \
      "$REDIS_PORT-$((REDIS_PORT + 2))" "$NSQ_PORT-$((NSQ_PORT + 2))"
    tls_up
    for service in "${services[@]}"; do
      case "$service" in
        postgres) pg_up ;;
        rabbitmq) rabbit_up ;;
        kafka) kafka_up ;;
        redis) redis up ;;
        nsq) nsq up ;;
      esac
    done
    print_env > "$LOCAL/env$(port_suffix "$PG_PORT" 54329)"
    print_env
    ;;
  down)
    choose_state_dir
    kafka down
    redis down
    nsq down
    rabbit_down
    pg_down
    ;;
  env)
    choose_state_dir
    print_env
    ;;
  kafka-log)
    # The broker's log of its current start (each start moves the one before aside).
    kafka log ${2:-}
    ;;
  stop|start|kill)
    choose_state_dir
    case "${2:-}:$1" in
      postgres:start) pg_up ;;
      postgres:stop) pg_down ;;
      rabbitmq:start) rabbit_up ;;
      rabbitmq:stop) rabbit_down ;;
      kafka:*) OUTBOX_KAFKA_TLS_DIR=$TLS_DIR kafka "$1" ${3:-} ;;
      redis:*) redis "$1" ${3:-} ;;
      nsq:*) nsq "$1" ;;
      *)
        echo "usage: $0 stop|start postgres|rabbitmq|kafka|redis|nsq [N|replica], or kill kafka [N]|redis [replica]|nsq" >&2
        exit 2
        ;;
    esac
    ;;
  drop-scratch-dbs)
    choose_state_dir
    pg_drop_scratch "${2:-}"
    ;;
  *)
    echo "usage: $0 [up [SERVICE...]|down|env|stop|start|kill SERVICE [N]|drop-scratch-dbs [t|bench]]" >&2
    exit 2
    ;;
esac
