#!/usr/bin/env bash
# The whole test suite: local services up, then every test (unit and integration) with nextest.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# The runner is not on a fresh machine; crates.io is the only place to get it from here.
NEXTEST_VERSION=0.9.151
if ! cargo nextest --version 2>/dev/null | grep -q "cargo-nextest $NEXTEST_VERSION"; then
  cargo install --locked "cargo-nextest@$NEXTEST_VERSION"
fi
# Assigned first: a failing `up` inside eval "$(...)" would not stop the script.
services_env=$(scripts/services.sh up)
eval "$services_env"
scripts/services.sh drop-scratch-dbs t
# What tests/clients_e2e.rs runs: the client libraries' tools and example writers.
scripts/clients.sh setup
status=0
cargo nextest run --no-fail-fast "$@" || status=$?
# The client libraries, against the same Postgres.
scripts/clients.sh test || status=$?
exit "$status"
