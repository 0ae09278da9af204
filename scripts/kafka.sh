#!/usr/bin/env bash
# A real Apache Kafka broker (KRaft mode) for the tests, from Maven Central, run as plain JVM
# processes bound to 127.0.0.1, with data under .local/kafka in the repository.
#
#   scripts/kafka.sh install           fetch the jars (scripts/kafka/pom.xml) into .local/kafka/libs-VERSION, once
#   scripts/kafka.sh up                one broker (combined broker+controller, node 1); waits until it serves
#   scripts/kafka.sh up-cluster        three brokers (nodes 1-3, each broker+controller, a 3-voter quorum)
#                                      (also: up --cluster)
#   scripts/kafka.sh down              stop the single broker and the cluster on these ports
#   scripts/kafka.sh stop|start [N]    one broker: N (1-3) of the cluster, or the single broker without N
#   scripts/kafka.sh kill [N]          the same as stop, with SIGKILL (no clean shutdown)
#   scripts/kafka.sh log [N]           the path of a broker's log (of its current start; the one
#                                      before is kept as server.log.prev)
#   scripts/kafka.sh env [--cluster]   print export lines: OUTBOX_KAFKA_BROKERS (the brokers' own
#                                      client ports), OUTBOX_KAFKA_ADVERTISED_BROKERS, OUTBOX_TEST_KAFKA_BOOTSTRAP
#   scripts/kafka.sh status            what runs on these ports
#   scripts/kafka.sh tool CLASS ARGS   run a Kafka tool on the installed jars, e.g.
#                                      tool org.apache.kafka.tools.TopicCommand --bootstrap-server 127.0.0.1:59092 --list
#
# Ports, from OUTBOX_KAFKA_PORT (P, default 59092):
#   single broker: clients P, controller (KRaft quorum) P+4000, inter-broker P+2000
#   cluster node N (1-3): clients P+2(N-1), controller P+4000+2(N-1), inter-broker P+2000+2(N-1)
#   (the listeners only brokers use sit above Linux's ephemeral port range, 32768-60999, where
#   a client connection of the tests or of another broker could hold the port at start)
#   (two apart, so that P+1, P+3, P+5 stay free for the fault suite's TCP proxies).
#   With OUTBOX_KAFKA_TLS_DIR (server.pem/key and wrong-host.pem/key there), the single broker
#   also serves TLS on P+3000 (the certificate for 127.0.0.1/localhost) and P+3001 (one of the
#   same CA for another host name). The single
#   broker and the cluster on the same P share ports: run them on different P's to have both.
# OUTBOX_KAFKA_ADVERTISED_PORT (single) / OUTBOX_KAFKA_ADVERTISED_PORTS="a,b,c" (cluster) is the
# client port each broker tells clients to connect to (default: its own; a TCP proxy in front for
# the fault suite). Only client traffic uses it: replication and the controller quorum use their
# own listeners, which no proxy sits in front of. Every start (up, start N) writes the broker's
# configuration from the environment: give `start N` the same advertised ports as `up`.
# Data: .local/kafka/single-P and .local/kafka/cluster-P/node-N, so two sets never share state.
# OUTBOX_KAFKA_HEAP (default "-Xms256m -Xmx512m") sets each broker's heap. JAVA_HOME chooses the
# JVM (17 or newer), else `java` on PATH. OUTBOX_KAFKA_READY_SECS (90) bounds every wait.
# Ready means: the broker answers a Metadata request on its client port and lists itself (up: all
# the set's brokers) as registered and unfenced.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd /
LOCAL="$ROOT/.local/kafka"
POM="$ROOT/scripts/kafka/pom.xml"
KAFKA_VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM")
LIBS="$LOCAL/libs-$KAFKA_VERSION"
PORT=${OUTBOX_KAFKA_PORT:-59092}
NODES=3
HEAP=${OUTBOX_KAFKA_HEAP:--Xms256m -Xmx512m}
READY_SECS=${OUTBOX_KAFKA_READY_SECS:-90}
JAVA=${JAVA_HOME:+$JAVA_HOME/bin/}java

log() { echo "kafka: $*" >&2; }
die() {
  log "$*"
  exit 1
}

now_ms() { date +%s%3N; }
elapsed() { # since a now_ms value, as seconds with one decimal
  local ms=$(($(now_ms) - $1))
  printf '%d.%d s' $((ms / 1000)) $((ms % 1000 / 100))
}

# ---------------------------------------------------------------------------------------------
# Install: the jar set of Kafka's distribution (libs/), from Maven Central.

install() {
  # The marker holds the pom's checksum: a changed pom installs again.
  local sum
  sum=$(sha256sum "$POM" | cut -c1-64)
  if [ -f "$LIBS/.complete" ] && [ "$(cat "$LIBS/.complete")" = "$sum" ]; then
    return
  fi
  command -v mvn >/dev/null 2>&1 || die "mvn not found (Debian package maven)"
  local start tmp
  start=$(now_ms)
  log "installing Kafka $KAFKA_VERSION from Maven Central into $LIBS"
  mkdir -p "$LOCAL"
  tmp="$LIBS.tmp.$$"
  rm -rf "$tmp"
  # Maven's output only on failure (with -q, Maven 3.8 still prints colour resets).
  if ! mvn -q -B -Dstyle.color=never -f "$POM" dependency:copy-dependencies -DoutputDirectory="$tmp" \
    >"$LOCAL/install.log" 2>&1; then
    cat "$LOCAL/install.log" >&2
    rm -rf "$tmp"
    die "mvn could not fetch the jars (see above; also in $LOCAL/install.log)"
  fi
  [ -f "$tmp/kafka_2.13-$KAFKA_VERSION.jar" ] || die "mvn left no kafka_2.13-$KAFKA_VERSION.jar in $tmp"
  rm -rf "$LIBS"
  mv "$tmp" "$LIBS"
  echo "$sum" > "$LIBS/.complete"
  log "installed $(find "$LIBS" -name '*.jar' | wc -l) jars ($(du -sh "$LIBS" | cut -f1)) in $(elapsed "$start")"
}

check_java() {
  command -v "$JAVA" >/dev/null 2>&1 || die "no java ($JAVA); Kafka $KAFKA_VERSION needs Java 17 or newer"
  local major
  major=$("$JAVA" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')
  [ "${major%%.*}" -ge 17 ] 2>/dev/null || die "$JAVA is Java $major; Kafka $KAFKA_VERSION needs 17 or newer"
}

# ---------------------------------------------------------------------------------------------
# Layout. A "node" is one broker process: "single" or 1..NODES of the cluster.

node_dir() {
  if [ "$1" = single ]; then echo "$LOCAL/single-$PORT"; else echo "$LOCAL/cluster-$PORT/node-$1"; fi
}
set_dir() {
  if [ "$1" = single ]; then echo "$LOCAL/single-$PORT"; else echo "$LOCAL/cluster-$PORT"; fi
}
node_id() {
  if [ "$1" = single ]; then echo 1; else echo "$1"; fi
}
offset_of() { # port offset of a node
  if [ "$1" = single ]; then echo 0; else echo $((2 * ($1 - 1))); fi
}
client_port() { echo $((PORT + $(offset_of "$1"))); }
controller_port() { echo $((PORT + 4000 + $(offset_of "$1"))); }
internal_port() { echo $((PORT + 2000 + $(offset_of "$1"))); }
# The single broker's TLS listeners (OUTBOX_KAFKA_TLS_DIR), by the certificate they present.
tls_port() {
  if [ "$1" = server ]; then echo $((PORT + 3000)); else echo $((PORT + 3001)); fi
}
advertised_port() {
  if [ "$1" = single ]; then
    echo "${OUTBOX_KAFKA_ADVERTISED_PORT:-$(client_port single)}"
    return
  fi
  if [ -n "${OUTBOX_KAFKA_ADVERTISED_PORTS:-}" ]; then
    local ports
    IFS=, read -r -a ports <<<"$OUTBOX_KAFKA_ADVERTISED_PORTS"
    [ "${#ports[@]}" = "$NODES" ] || die "OUTBOX_KAFKA_ADVERTISED_PORTS needs $NODES ports, comma-separated"
    echo "${ports[$(($1 - 1))]}"
  else
    client_port "$1"
  fi
}
cluster_nodes() { seq 1 "$NODES"; }

port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# The pid of a node's broker if it runs (the pid file's process, and a java started for this
# node: a recycled pid is not taken for it).
node_pid() {
  local dir pid
  dir=$(node_dir "$1")
  [ -f "$dir/kafka.pid" ] || return 1
  pid=$(cat "$dir/kafka.pid")
  alive "$pid" || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "-Doutbox.kafka.node=$dir " || return 1
  echo "$pid"
}

# ---------------------------------------------------------------------------------------------
# Configuration.

write_config() {
  local node=$1 dir id voters="" n rf=3 isr=2
  dir=$(node_dir "$node")
  id=$(node_id "$node")
  if [ "$node" = single ]; then
    rf=1
    isr=1
    voters="1@127.0.0.1:$(controller_port single)"
  else
    for n in $(cluster_nodes); do
      voters="${voters:+$voters,}$n@127.0.0.1:$(controller_port "$n")"
    done
  fi
  # TLS client listeners (single broker, with OUTBOX_KAFKA_TLS_DIR): SSL presents the server
  # certificate for 127.0.0.1/localhost, SSLWRONGHOST one of the same CA for another name (the TLS
  # tests check that clients verify the host, not only the chain). PEM keystores: key and chain in
  # one file, as Kafka reads them.
  local tls_listeners="" tls_advertised="" tls_map="" tls_props=""
  if [ "$node" = single ] && [ -n "${OUTBOX_KAFKA_TLS_DIR:-}" ]; then
    local cert
    for cert in server wrong-host; do
      cat "$OUTBOX_KAFKA_TLS_DIR/$cert.key" "$OUTBOX_KAFKA_TLS_DIR/$cert.pem" >"$dir/$cert-keystore.pem"
      chmod 600 "$dir/$cert-keystore.pem"
    done
    tls_listeners=",SSL://127.0.0.1:$(tls_port server),SSLWRONGHOST://127.0.0.1:$(tls_port wrong-host)"
    tls_advertised="$tls_listeners"
    tls_map=",SSL:SSL,SSLWRONGHOST:SSL"
    tls_props="listener.name.ssl.ssl.keystore.type=PEM
listener.name.ssl.ssl.keystore.location=$dir/server-keystore.pem
listener.name.sslwronghost.ssl.keystore.type=PEM
listener.name.sslwronghost.ssl.keystore.location=$dir/wrong-host-keystore.pem"
  fi
  cat >"$dir/server.properties.tmp" <<PROPS
# Written by scripts/kafka.sh at every start; edits are lost.
process.roles=broker,controller
node.id=$id
controller.quorum.voters=$voters
controller.listener.names=CONTROLLER
# CLIENT: what clients use (advertised port: a proxy may sit in front). INTERNAL: replication and
# transaction markers, broker to broker, never through a proxy.
listeners=CLIENT://127.0.0.1:$(client_port "$node"),INTERNAL://127.0.0.1:$(internal_port "$node"),CONTROLLER://127.0.0.1:$(controller_port "$node")$tls_listeners
advertised.listeners=CLIENT://127.0.0.1:$(advertised_port "$node"),INTERNAL://127.0.0.1:$(internal_port "$node")$tls_advertised
listener.security.protocol.map=CLIENT:PLAINTEXT,INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT$tls_map
$tls_props
inter.broker.listener.name=INTERNAL
log.dirs=$dir/data

# Topics are created by the tests (a producer must not create a missing one: the relay's tests
# check that an unknown topic is retried, then dead).
auto.create.topics.enable=false
num.partitions=1
default.replication.factor=$rf
min.insync.replicas=$isr
unclean.leader.election.enable=false
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
transaction.state.log.num.partitions=3
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr
group.initial.rebalance.delay.ms=0

# Small: a test broker on 2 cores, beside two more and the tests.
num.network.threads=2
num.io.threads=4
background.threads=4
num.recovery.threads.per.data.dir=1
log.cleaner.dedupe.buffer.size=16777216

# Leadership goes back to the preferred replicas 30 s (not 300 s) after a broker returns.
leader.imbalance.check.interval.seconds=30

# A killed broker is fenced (its partitions get new leaders, it leaves the ISRs) after 6 s
# instead of 9 s; a killed single broker can register again (serve) 6 s after its previous life.
broker.heartbeat.interval.ms=1000
broker.session.timeout.ms=6000
PROPS
  mv "$dir/server.properties.tmp" "$dir/server.properties"

  # log4j2: one file per start (server.log; launch moves the previous start's to
  # server.log.prev), capped at 2 x 100 MB. Appending, and no log4j shutdown hook: with the hook,
  # log4j stops while the broker still logs its shutdown, a new logging context starts and (with
  # append = false) it truncated the file to the shutdown's last lines.
  cat >"$dir/log4j2.properties" <<'LOG4J'
status = warn
shutdownHook = disable
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = ${sys:kafka.logs.dir}/${sys:kafka.log.name:-server.log}
appender.file.filePattern = ${sys:kafka.logs.dir}/${sys:kafka.log.name:-server.log}.%i
appender.file.append = true
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 100MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 1
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.network.name = kafka.network.RequestChannel$
logger.network.level = WARN
LOG4J
}

jvm_common() { # args for every JVM on a node's directory
  local dir=$1
  printf '%s\n' -Djava.awt.headless=true "-Dkafka.logs.dir=$dir" "-Dlog4j2.configurationFile=$dir/log4j2.properties"
}

# The cluster id, generated once per set (single-P, or cluster-P for all its nodes) and kept.
cluster_id() {
  local file
  file="$(set_dir "$1")/cluster.id"
  if [ ! -s "$file" ]; then
    mkdir -p "$(dirname "$file")"
    "$JAVA" -cp "$LIBS/*" kafka.tools.StorageTool random-uuid >"$file.tmp"
    mv "$file.tmp" "$file"
  fi
  cat "$file"
}

# Formats the node's log directory once (meta.properties marks it formatted).
format_storage() {
  local node=$1 dir id
  dir=$(node_dir "$node")
  [ -f "$dir/data/meta.properties" ] && return
  id=$(cluster_id "$node")
  local -a common
  mapfile -t common < <(jvm_common "$dir")
  rm -f "$dir/format.log"
  if ! "$JAVA" "${common[@]}" -Dkafka.log.name=format.log -cp "$LIBS/*" kafka.tools.StorageTool format \
    --config "$dir/server.properties" --cluster-id "$id" --ignore-formatted >"$dir/format.out" 2>&1; then
    cat "$dir/format.out" >&2
    die "formatting $dir/data failed"
  fi
}

# ---------------------------------------------------------------------------------------------
# Readiness: a Metadata request (v4, no topics) on the client port, in bash. Prints the node ids
# of the brokers that the answering broker lists (registered and unfenced), one per line.
# shellcheck disable=SC2016 # expanded by the bash that runs it
METADATA_PROBE='
exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
# size 20; api_key 3 (Metadata), version 4, correlation id 7, client id "probe";
# topics: empty array; allow_auto_topic_creation: false
printf "\x00\x00\x00\x14\x00\x03\x00\x04\x00\x00\x00\x07\x00\x05probe\x00\x00\x00\x00\x00" >&3
size=$(dd bs=4 count=1 iflag=fullblock status=none <&3 | od -An -tu1)
set -- $size
[ $# = 4 ] || exit 1
n=$(( ($1 << 24) | ($2 << 16) | ($3 << 8) | $4 ))
[ "$n" -gt 8 ] && [ "$n" -lt 1048576 ] || exit 1
dd bs="$n" count=1 iflag=fullblock status=none <&3 | od -An -v -tu1
'

metadata_nodes() {
  local port=$1 bytes
  bytes=$(timeout 3 bash -c "$METADATA_PROBE" probe "$port" 2>/dev/null) || return 1
  local -a b
  # od's lines joined into one.
  read -r -a b <<<"${bytes//$'\n'/ }"
  # correlation id (4), throttle_time_ms (4), brokers: count (4), then per broker:
  # node_id (4), host (int16 length + bytes), port (4), rack (int16 length, -1 for null, + bytes)
  [ "${#b[@]}" -ge 12 ] || return 1
  [ "${b[0]}${b[1]}${b[2]}${b[3]}" = 0007 ] || return 1
  local count i=12 k len
  count=$(((b[8] << 24) | (b[9] << 16) | (b[10] << 8) | b[11]))
  for ((k = 0; k < count; k++)); do
    echo $(((b[i] << 24) | (b[i + 1] << 16) | (b[i + 2] << 8) | b[i + 3]))
    i=$((i + 4))
    len=$(((b[i] << 8) | b[i + 1]))
    i=$((i + 2 + len + 4))
    len=$(((b[i] << 8) | b[i + 1]))
    if [ "$len" = 65535 ]; then i=$((i + 2)); else i=$((i + 2 + len)); fi
  done
}

# Waits until node's broker answers a Metadata request listing every node id in "$@" (a
# deadline of READY_SECS); fails early if its process dies.
wait_ready() {
  local node=$1 deadline listed="" want ok pid
  shift
  deadline=$(($(now_ms) + READY_SECS * 1000))
  # The pid launch wrote, alive or not; not node_pid, which also wants the broker's command
  # line: until setsid has exec'd the JVM, the process is still a copy of this shell.
  pid=$(cat "$(node_dir "$node")/kafka.pid" 2>/dev/null) || pid=""
  while :; do
    if [ -z "$pid" ] || ! alive "$pid"; then
      log "broker $node exited during start; the end of its log and output ($(node_dir "$node")):"
      tail -n 20 "$(node_dir "$node")/server.log" >&2 2>/dev/null || true
      tail -n 20 "$(node_dir "$node")/kafka.out" >&2 2>/dev/null || true
      return 1
    fi
    if listed=$(metadata_nodes "$(client_port "$node")"); then
      ok=1
      for want in "$@"; do
        grep -qx "$want" <<<"$listed" || ok=0
      done
      [ "$ok" = 1 ] && return 0
    fi
    if [ "$(now_ms)" -gt "$deadline" ]; then
      log "broker $node not ready after ${READY_SECS}s (lists: ${listed//$'\n'/ }); see $(node_dir "$node")/server.log"
      return 1
    fi
    sleep 0.2
  done
}

# ---------------------------------------------------------------------------------------------
# Processes.

# Checks that a node's ports are free, writes its configuration, formats its storage once.
prepare() {
  local node=$1 p
  for p in "$(client_port "$node")" "$(controller_port "$node")" "$(internal_port "$node")"; do
    if port_open "$p"; then
      die "port $p (broker $node) is taken by another process; is a set already running on OUTBOX_KAFKA_PORT=$PORT?"
    fi
  done
  mkdir -p "$(node_dir "$node")"
  write_config "$node"
  format_storage "$node"
}

# Starts a node's JVM if it is not running (does not wait for it).
launch() {
  local node=$1 dir
  dir=$(node_dir "$node")
  if node_pid "$node" >/dev/null; then
    return
  fi
  [ "${2:-}" = prepared ] || prepare "$node"
  [ -f "$dir/server.log" ] && mv -f "$dir/server.log" "$dir/server.log.prev"
  local -a common heap
  mapfile -t common < <(jvm_common "$dir")
  read -r -a heap <<<"$HEAP"
  # Detached (own session, no stdin/stdout of ours): callers that read this script's output
  # are not held open by the broker, and a Ctrl-C to the caller does not reach it.
  setsid "$JAVA" "${heap[@]}" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
    -XX:+ExplicitGCInvokesConcurrent "${common[@]}" "-Doutbox.kafka.node=$dir" \
    -cp "$LIBS/*" kafka.Kafka "$dir/server.properties" </dev/null >"$dir/kafka.out" 2>&1 &
  echo $! >"$dir/kafka.pid"
}

# A process that has exited but not been reaped yet (a zombie) counts as gone.
alive() {
  kill -0 "$1" 2>/dev/null || return 1
  local state
  state=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null)
  [ -n "$state" ] && [ "$state" != Z ]
}

# Stops a node: SIGTERM (clean shutdown; SIGKILL after the deadline) or SIGKILL; returns once the
# process is gone, so that a following start does not find the old listener.
halt() {
  local node=$1 signal=$2 pid dir
  dir=$(node_dir "$node")
  if ! pid=$(node_pid "$node"); then
    rm -f "$dir/kafka.pid"
    return
  fi
  kill "-$signal" "$pid" 2>/dev/null || true
  local deadline=$(($(now_ms) + READY_SECS * 1000))
  while alive "$pid"; do
    if [ "$(now_ms)" -gt "$deadline" ]; then
      log "broker $node (pid $pid) still running ${READY_SECS}s after SIG$signal: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      deadline=$(($(now_ms) + 10000))
      signal=KILL
    fi
    sleep 0.1
  done
  rm -f "$dir/kafka.pid"
}

single_up() {
  install
  check_java
  if node_pid single >/dev/null; then
    wait_ready single 1 || exit 1
    log "already running on 127.0.0.1:$(client_port single) (pid $(node_pid single))"
    return
  fi
  local start
  start=$(now_ms)
  launch single
  wait_ready single 1 || exit 1
  log "broker running on 127.0.0.1:$(client_port single) (controller $(controller_port single)," \
    "inter-broker $(internal_port single), pid $(node_pid single)): ready in $(elapsed "$start")"
}

cluster_up() {
  install
  check_java
  local start n ids todo=() pids=() failed=0
  start=$(now_ms)
  ids=$(cluster_nodes)
  for n in $ids; do
    node_pid "$n" >/dev/null || todo+=("$n")
  done
  if [ "${#todo[@]}" -gt 0 ]; then
    # The nodes to start are prepared together (a format is a JVM start of about a second), then
    # started together: the quorum needs a majority of them before any serves.
    cluster_id 1 >/dev/null
    for n in "${todo[@]}"; do
      prepare "$n" &
      pids+=($!)
    done
    for n in "${pids[@]}"; do
      wait "$n" || failed=1
    done
    [ "$failed" = 0 ] || exit 1
    for n in "${todo[@]}"; do
      launch "$n" prepared
    done
  fi
  for n in $ids; do
    # shellcheck disable=SC2086
    wait_ready "$n" $ids || exit 1
  done
  if [ "${#todo[@]}" = 0 ]; then
    log "cluster already running on $(cluster_brokers direct)"
  else
    log "cluster of $NODES running on $(cluster_brokers direct) (started: nodes ${todo[*]}): ready in $(elapsed "$start")"
  fi
}

node_start() {
  local node=$1 start
  install
  check_java
  start=$(now_ms)
  launch "$node"
  # Serving, and listed by itself: registered with the quorum and unfenced.
  wait_ready "$node" "$(node_id "$node")" || exit 1
  log "broker $node running on 127.0.0.1:$(client_port "$node") (pid $(node_pid "$node")): ready in $(elapsed "$start")"
}

node_stop() {
  local node=$1 signal=$2 pid
  if pid=$(node_pid "$node"); then
    halt "$node" "$signal"
    log "broker $node (pid $pid) stopped (SIG$signal)"
  else
    halt "$node" "$signal"
    log "broker $node not running"
  fi
}

all_down() {
  local n pids=()
  # The cluster's nodes get SIGTERM together (one by one, the last would wait for a quorum that
  # is gone), then each is waited for.
  for n in $(cluster_nodes); do
    if node_pid "$n" >/dev/null; then
      kill -TERM "$(node_pid "$n")" 2>/dev/null || true
      pids+=("$n")
    fi
  done
  for n in "${pids[@]}"; do
    halt "$n" TERM
  done
  [ "${#pids[@]}" = 0 ] || log "cluster on $PORT stopped (nodes ${pids[*]})"
  if node_pid single >/dev/null; then
    halt single TERM
    log "broker on $PORT stopped"
  fi
}

cluster_brokers() { # direct | advertised
  local n list=""
  for n in $(cluster_nodes); do
    if [ "$1" = direct ]; then
      list="${list:+$list,}127.0.0.1:$(client_port "$n")"
    else
      list="${list:+$list,}127.0.0.1:$(advertised_port "$n")"
    fi
  done
  echo "$list"
}

print_env() {
  local brokers advertised
  if [ "${1:-}" = cluster ]; then brokers=$(cluster_brokers direct); else brokers="127.0.0.1:$(client_port single)"; fi
  if [ "${1:-}" = cluster ]; then advertised=$(cluster_brokers advertised); else advertised="127.0.0.1:$(advertised_port single)"; fi
  # OUTBOX_KAFKA_BROKERS: the brokers' own client ports; OUTBOX_KAFKA_ADVERTISED_BROKERS: the
  # ports they tell clients to use (the same, unless a proxy sits in front).
  cat <<ENV
export OUTBOX_KAFKA_BROKERS=$brokers
export OUTBOX_KAFKA_ADVERTISED_BROKERS=$advertised
export OUTBOX_TEST_KAFKA_BOOTSTRAP=$brokers
ENV
}

status() {
  local node pid
  for node in single $(cluster_nodes); do
    if pid=$(node_pid "$node"); then
      echo "$node: running, pid $pid, 127.0.0.1:$(client_port "$node") (advertised $(advertised_port "$node")), $(node_dir "$node")"
    elif [ -d "$(node_dir "$node")" ]; then
      echo "$node: stopped, $(node_dir "$node")"
    fi
  done
}

node_arg() { # "" -> single, 1..NODES -> that node
  case "${1:-}" in
    '') echo single ;;
    *)
      if [[ "$1" =~ ^[0-9]+$ ]] && [ "$1" -ge 1 ] && [ "$1" -le "$NODES" ]; then
        echo "$1"
      else
        die "no broker '$1' (the cluster's are 1-$NODES; none for the single broker)"
      fi
      ;;
  esac
}

case "${1:-}" in
  install) install ;;
  up)
    if [ "${2:-}" = --cluster ]; then cluster_up; else single_up; fi
    ;;
  up-cluster) cluster_up ;;
  down) all_down ;;
  start | stop | kill | log)
    node=$(node_arg "${2:-}") || exit 2
    case "$1" in
      start) node_start "$node" ;;
      stop) node_stop "$node" TERM ;;
      kill) node_stop "$node" KILL ;;
      log) echo "$(node_dir "$node")/server.log" ;;
    esac
    ;;
  env)
    if [ "${2:-}" = --cluster ]; then print_env cluster; else print_env single; fi
    ;;
  status) status ;;
  tool)
    shift
    [ $# -ge 1 ] || die "usage: $0 tool CLASS [ARGS...]"
    install
    # Tools log warnings and errors only, to stderr.
    printf '%s\n' 'status = warn' 'appender.err.type = Console' 'appender.err.name = ERR' \
      'appender.err.target = SYSTEM_ERR' 'appender.err.layout.type = PatternLayout' \
      'appender.err.layout.pattern = [%d] %p %m (%c)%n' 'rootLogger.level = WARN' \
      'rootLogger.appenderRef.err.ref = ERR' >"$LOCAL/tools-log4j2.properties"
    exec "$JAVA" "-Dlog4j2.configurationFile=$LOCAL/tools-log4j2.properties" -cp "$LIBS/*" "$@"
    ;;
  *)
    echo "usage: $0 install|up [--cluster]|up-cluster|down|start [N]|stop [N]|kill [N]|log [N]|env [--cluster]|status|tool CLASS ARGS" >&2
    exit 2
    ;;
esac
