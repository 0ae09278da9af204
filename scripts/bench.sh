#!/usr/bin/env bash
# `make bench`: starts the local services (Postgres, RabbitMQ, Apache Kafka, Redis, nsqd),
# then runs benches/relay/main.rs. Figures: target/bench.json; see docs/performance.md.
set -euo pipefail
cd "$(dirname "$0")/.."
# Assigned first: a failing `up` inside eval "$(...)" would not stop the script.
services_env=$(scripts/services.sh up postgres rabbitmq kafka redis nsq)
eval "$services_env"
# Databases left by earlier test runs would cost Postgres autovacuum work during the bench.
scripts/services.sh drop-scratch-dbs
# The local Postgres offers TLS (for the TLS tests) and the driver's default sslmode=prefer would
# take it: on loopback, encryption costs about a third of the database ceiling
# (docs/performance.md). A sidecar next to its database normally talks plain TCP; measure that.
export OUTBOX_TEST_DATABASE_URL="${OUTBOX_TEST_DATABASE_URL}?sslmode=disable"
cargo bench --bench relay
# The charts and table of docs/performance/latest.md are of one whole run: a run of some parts
# (BENCH_ONLY) draws its charts under target/ instead.
if [ -z "${BENCH_ONLY:-}" ]; then
  cargo bench --bench charts
else
  cargo bench --bench charts -- target/bench.json target/bench-charts
fi
