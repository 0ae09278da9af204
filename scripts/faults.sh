#!/usr/bin/env bash
# The fault-injection suite (tests/faults). It stops, kills and restarts Postgres, RabbitMQ,
# Kafka brokers, Redis and nsqd, so it runs its own instances on other ports (data under .local/
# in directories named after those ports), never the ones `make test` uses: Postgres, RabbitMQ,
# and a cluster of three Kafka brokers (replication factor 3, min.insync.replicas 2) whose
# advertised client ports are the suite's TCP proxies, so the relay's Kafka connections pass
# through them; Redis, a primary with its replica; nsqd (--mem-queue-size=0, as scripts/nsq.sh
# runs it).
# Settings: FAULTS_ROUNDS (3), FAULTS_RATE (200 msg/s), FAULTS_BROKERS (rabbitmq,rabbitmq-aa,kafka,
# kafka-eos,kafka-aa,redis,nsq; kafka-eos is Kafka with exactly-once delivery, read back with
# read_committed), FAULTS_WRITERS (4), FAULTS_KEYS_PER_WRITER (25), FAULTS_RECOVERY_BOUND_SECS
# (30), FAULTS_ONLY and FAULTS_SKIP (parts of fault names, comma-separated), FAULTS_KAFKA_DEBUG
# (the relay's librdkafka debug contexts, eos). Ports: FAULTS_PG_PORT, FAULTS_AMQP_PORT,
# FAULTS_KAFKA_PORT, FAULTS_REDIS_PORT, FAULTS_NSQ_PORT.
# The -aa targets are active-active: three relay replicas sharing relay.partitions=6 under one
# lease name, at-least-once, through kill -9, SIGSTOP and SIGTERM of replicas, the broker restart
# and a relay-broker reset (tests/faults/replicas.rs). With the default rounds they add about 3.5
# minutes: rabbitmq-aa about 1.5 (18 faults), kafka-aa 1.5 to 2 (16), as kafka-aa restarts a
# Kafka broker in its first round only (a broker takes 40 to 50 s to start on 2 cores beside
# three relays; the kafka target restarts each broker in turn).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export OUTBOX_PG_PORT=${FAULTS_PG_PORT:-54339}
export OUTBOX_AMQP_PORT=${FAULTS_AMQP_PORT:-56739}
export OUTBOX_KAFKA_PORT=${FAULTS_KAFKA_PORT:-59102}
export OUTBOX_KAFKA_CLUSTER=1
export OUTBOX_REDIS_PORT=${FAULTS_REDIS_PORT:-56389}
export OUTBOX_NSQ_PORT=${FAULTS_NSQ_PORT:-54160}
# nsqd syncs its on-disk queues after every operation, so that a kill -9 loses next to nothing
# it acknowledged: what it does lose is credited to the kill only if acknowledged in a short
# window before it (NSQD_UNSYNCED in tests/faults/fault.rs). An nsqd already running from an
# earlier run keeps its flags until the first fault restarts it.
export OUTBOX_NSQ_SYNC_EVERY=1
# Each broker's proxy listens one port above the broker (scripts/kafka.sh leaves those free).
export OUTBOX_KAFKA_ADVERTISED_PORTS="$((OUTBOX_KAFKA_PORT + 1)),$((OUTBOX_KAFKA_PORT + 3)),$((OUTBOX_KAFKA_PORT + 5))"
# Only the services of the brokers under test (FAULTS_BROKERS=nsq starts Postgres and nsqd).
services=(postgres)
for broker in $(echo "${FAULTS_BROKERS:-rabbitmq,rabbitmq-aa,kafka,kafka-eos,kafka-aa,redis,nsq}" | tr ',' ' '); do
  case "$broker" in
    rabbitmq | amqp | rabbitmq-aa) services+=(rabbitmq) ;;
    kafka | kafka-eos | kafka-aa) services+=(kafka) ;;
    redis | nsq) services+=("$broker") ;;
  esac
done
# Assigned first: a failing `up` inside eval "$(...)" would not stop the script.
services_env=$(scripts/services.sh up "${services[@]}")
eval "$services_env"
export FAULTS_RUN=1
cargo test --test faults "$@"
