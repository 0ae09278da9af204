#!/usr/bin/env bash
# The main job (BROKER=amqp, the default, BROKER=kafka, BROKER=redis or BROKER=nsq): local services up, the relay built, migrated and running, sample messages
# through enqueue, prepare+commit and prepare+rollback, consumed from the broker and printed.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

# Only the services this demo uses: BROKER=kafka starts Kafka and no RabbitMQ, the default
# RabbitMQ and no Kafka. Assigned first: a failing `up` inside eval "$(...)" would not stop
# the script.
case "${BROKER:-amqp}" in
  amqp) broker_service=rabbitmq ;;
  kafka) broker_service=kafka ;;
  redis) broker_service=redis ;;
  nsq) broker_service=nsq ;;
  *)
    echo "BROKER must be amqp, kafka, redis or nsq, not ${BROKER}" >&2
    exit 2
    ;;
esac
services_env=$(scripts/services.sh up postgres "$broker_service")
eval "$services_env"
cargo build --quiet --bin outbox-relay --example demo
# Where cargo put them: CARGO_TARGET_DIR may point outside the repository.
BIN=${CARGO_TARGET_DIR:-target}/debug

ADMIN_URL=$OUTBOX_TEST_DATABASE_URL
DEMO_DB=outbox_demo
if ! psql "$ADMIN_URL" -Atc "SELECT 1 FROM pg_database WHERE datname = '$DEMO_DB'" | grep -q 1; then
  psql "$ADMIN_URL" -qc "CREATE DATABASE $DEMO_DB"
fi
export DEMO_DATABASE_URL=${ADMIN_URL%/*}/$DEMO_DB
export DEMO_AMQP_URL=$OUTBOX_TEST_AMQP_URL
export OUTBOX_RELAY__DATABASE__URL=$DEMO_DATABASE_URL
export OUTBOX_RELAY__BROKER__AMQP__URL=$DEMO_AMQP_URL
export OUTBOX_RELAY__LOG__FORMAT=text
# BROKER=kafka, redis or nsq runs the same demo against the local Kafka broker, Redis or nsqd.
export DEMO_BROKER=${BROKER:-amqp}
export DEMO_KAFKA_BOOTSTRAP=$OUTBOX_TEST_KAFKA_BOOTSTRAP
export OUTBOX_RELAY__BROKER__KIND=$DEMO_BROKER
export OUTBOX_RELAY__BROKER__KAFKA__BOOTSTRAP_SERVERS=$OUTBOX_TEST_KAFKA_BOOTSTRAP
export DEMO_REDIS_URL=$OUTBOX_TEST_REDIS_URL
export OUTBOX_RELAY__BROKER__REDIS__URL=$OUTBOX_TEST_REDIS_URL
export DEMO_NSQD_ADDRESS=$OUTBOX_TEST_NSQD_ADDRESS
export OUTBOX_RELAY__BROKER__NSQ__NSQD_TCP_ADDRESS=$OUTBOX_TEST_NSQD_ADDRESS

echo "== migrate"
"$BIN/outbox-relay" migrate

LOG="$ROOT/.local/demo-relay.log"
echo "== relay running (log: $LOG)"
"$BIN/outbox-relay" run --config config.example.toml >"$LOG" 2>&1 &
RELAY=$!
trap 'kill -TERM $RELAY 2>/dev/null || true' EXIT

echo "== demo"
"$BIN/examples/demo"

echo "== stopping the relay (SIGTERM)"
kill -TERM $RELAY
wait $RELAY && echo "relay exited cleanly"
trap - EXIT
