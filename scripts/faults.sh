#!/usr/bin/env bash
# The fault-injection suite (tests/faults). It stops and restarts Postgres, RabbitMQ and the
# Kafka-protocol broker, so it runs its own instances on other ports (data under .local/ in
# directories named after those ports), never the ones `make test` uses. tansu advertises the
# port of the suite's TCP proxy, so the relay's Kafka connections pass through it.
# Settings: FAULTS_ROUNDS (3), FAULTS_RATE (200 msg/s), FAULTS_BROKERS (rabbitmq,kafka),
# FAULTS_WRITERS (4), FAULTS_KEYS_PER_WRITER (25), FAULTS_RECOVERY_BOUND_SECS (30).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export OUTBOX_PG_PORT=${FAULTS_PG_PORT:-54339}
export OUTBOX_AMQP_PORT=${FAULTS_AMQP_PORT:-56739}
export OUTBOX_KAFKA_PORT=${FAULTS_KAFKA_PORT:-59102}
export OUTBOX_KAFKA_ADVERTISED_PORT=${FAULTS_KAFKA_PROXY_PORT:-59103}
# Assigned first: a failing `up` inside eval "$(...)" would not stop the script.
services_env=$(scripts/services.sh up)
eval "$services_env"
export FAULTS_RUN=1
# A fresh tansu for every run: a crashed one (see Fault::runs_on in tests/faults/main.rs) would
# fail the next run for a reason that is not the relay's. Its SQLite data survives the restart.
fresh_tansu() {
  scripts/services.sh stop kafka
  scripts/services.sh start kafka
}
fresh_tansu
if cargo test --test faults "$@"; then
  exit 0
fi
# tansu, the stand-in Kafka-protocol broker, can panic mid-run ("more or less than one row",
# after librdkafka's idempotent-producer epoch bump); every Kafka fault after that fails for a
# reason that is not the relay's. Only then is the suite run once more, on a fresh tansu: a
# failure with tansu alive, or a second failure, fails the suite. The real Apache Kafka broker
# replaces tansu (issue 23).
log=$(scripts/services.sh kafka-log)
if ! grep -q "panicked" "$log"; then
  exit 1
fi
echo "faults: tansu panicked during the run (its log: $log); running the suite once more on a fresh tansu" >&2
grep -m1 -A1 "panicked" "$log" >&2 || true
fresh_tansu
cargo test --test faults "$@"
