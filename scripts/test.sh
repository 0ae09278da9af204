#!/usr/bin/env bash
# The whole test suite: local services up, then every test (unit and integration) with nextest.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
eval "$(scripts/services.sh up)"
scripts/services.sh drop-scratch-dbs t
cargo nextest run --no-fail-fast "$@"
