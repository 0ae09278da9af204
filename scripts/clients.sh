#!/usr/bin/env bash
# The client libraries (clients/*), each with its own ecosystem's tools.
#   scripts/clients.sh lint   formatters, linters and type checks
#   scripts/clients.sh setup  install each library's tools and build what tests/clients_e2e.rs
#                             runs (test.sh runs it before the Rust tests)
#   scripts/clients.sh test   their tests against the Postgres of scripts/services.sh (the
#                             caller has it up and OUTBOX_TEST_DATABASE_URL set, as test.sh does)
# Python's tools live in clients/python/.venv, installed from PyPI at the versions
# clients/python/pyproject.toml pins; TypeScript's in clients/typescript/node_modules, from npm
# as package-lock.json pins them. Each is installed again only when that file changes. Java's
# come from Maven Central into ~/.m2, as clients/java/pom.xml pins them.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

python_env() {
  local venv=clients/python/.venv stamp
  stamp=$(sha256sum clients/python/pyproject.toml | cut -d' ' -f1)
  if [ "$(cat "$venv/.installed" 2>/dev/null)" != "$stamp" ]; then
    python3 -m venv "$venv"
    python3 -c 'import sys, tomllib; print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["optional-dependencies"]["test"]))' \
      clients/python/pyproject.toml | xargs "$venv/bin/pip" install --quiet --disable-pip-version-check
    echo "$stamp" >"$venv/.installed"
  fi
}

node_env() {
  local dir=clients/typescript stamp
  stamp=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
  if [ "$(cat "$dir/node_modules/.installed" 2>/dev/null)" != "$stamp" ]; then
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$stamp" >"$dir/node_modules/.installed"
  fi
}

setup() {
  python_env
  node_env
  # The Java writer of tests/clients_e2e.rs runs from the compiled test classes.
  (cd clients/java && mvn -q -B -Dstyle.color=never test-compile dependency:build-classpath \
    -Dmdep.outputFile=target/classpath.txt -Dmdep.includeScope=test)
}

lint() {
  local unformatted
  unformatted=$(gofmt -l clients/go)
  if [ -n "$unformatted" ]; then
    echo "gofmt: $unformatted" >&2
    exit 1
  fi
  (cd clients/go && go vet ./...)
  python_env
  (cd clients/python && .venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy)
  node_env
  (cd clients/typescript && npm run --silent lint)
  # google-java-format, and javac's every lint warning as an error (the tests' too).
  (cd clients/java && mvn -q -B -Dstyle.color=never spotless:check test-compile)
}

test_all() {
  # The libraries migrate their databases with the relay binary, as users do.
  cargo build --quiet --bin outbox-relay
  export OUTBOX_TEST_RELAY_BIN="$ROOT/target/debug/outbox-relay"
  python_env
  node_env
  local status=0
  (cd clients/go && go test -count=1 ./...) || status=$?
  (cd clients/python && .venv/bin/pytest -q) || status=$?
  (cd clients/typescript && npm test --silent) || status=$?
  (cd clients/java && mvn -q -B -Dstyle.color=never test) || status=$?
  return "$status"
}

case "${1:-}" in
  setup) setup ;;
  lint) lint ;;
  test) test_all ;;
  *)
    echo "usage: $0 setup|lint|test" >&2
    exit 2
    ;;
esac
