#!/usr/bin/env bash
# `make bench`: starts the local services, plus a Kafka-protocol broker of the bench's own with
# tansu's in-memory storage: with its SQLite storage, tansu's produce round trip grows with the
# data it holds (seconds per request after some 10^5 messages), which would measure tansu, not
# the relay (docs/performance.md). Then runs benches/relay/main.rs. Figures: target/bench.json.
set -euo pipefail
cd "$(dirname "$0")/.."
# Assigned first: a failing `up` inside eval "$(...)" would not stop the script.
services_env=$(scripts/services.sh up)
eval "$services_env"
# Databases left by earlier test runs would cost Postgres autovacuum work during the bench.
scripts/services.sh drop-scratch-dbs
# The local Postgres offers TLS (for the TLS tests) and the driver's default sslmode=prefer would
# take it: on loopback, encryption costs about a third of the database ceiling
# (docs/performance.md). A sidecar next to its database normally talks plain TCP; measure that.
export OUTBOX_TEST_DATABASE_URL="${OUTBOX_TEST_DATABASE_URL}?sslmode=disable"

BENCH_KAFKA_PORT=${BENCH_KAFKA_PORT:-59192}
dir=$(mktemp -d "${TMPDIR:-/tmp}/outbox-relay-bench-kafka.XXXXXX")
tansu=$(command -v tansu || echo "${CARGO_HOME:-$HOME/.cargo}/bin/tansu")
(cd "$dir" && exec "$tansu" broker \
  --listener-url "tcp://127.0.0.1:$BENCH_KAFKA_PORT" \
  --advertised-listener-url "tcp://127.0.0.1:$BENCH_KAFKA_PORT" \
  --storage-engine "memory://tansu/" </dev/null >tansu.log 2>&1) &
broker=$!
trap 'kill $broker 2>/dev/null || true; wait $broker 2>/dev/null || true; rm -rf "$dir"' EXIT
up=0
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$BENCH_KAFKA_PORT") 2>/dev/null && { up=1; break; }
  sleep 0.1
done
if [ "$up" = 0 ]; then
  echo "bench: tansu did not start on port $BENCH_KAFKA_PORT:" >&2
  cat "$dir/tansu.log" >&2
  exit 1
fi
export OUTBOX_TEST_KAFKA_BOOTSTRAP=127.0.0.1:$BENCH_KAFKA_PORT
cargo bench --bench relay
