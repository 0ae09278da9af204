.PHONY: demo test faults bench lint audit chart-check package-check services-up services-down man

# The main job: services, migrations, the relay, sample messages through the broker
# (BROKER=kafka for Kafka, BROKER=redis for Redis Streams, BROKER=nsq for NSQ).
demo:
	scripts/demo.sh

# The whole test suite against real Postgres, RabbitMQ, Apache Kafka, Redis and NSQ, and the
# client libraries' tests against the same Postgres.
test:
	scripts/test.sh

# Fault injection (kills, restarts, network trouble) against separate service instances;
# see docs/TESTING.md "Under faults". FAULTS_ROUNDS=1 for a quicker run.
faults:
	scripts/faults.sh

# Throughput next to the machine's ceilings (BENCH_ROWS, default 200000); see docs/performance.md.
bench:
	scripts/bench.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
	scripts/clients.sh lint

# Dependency licences, banned/duplicate crates and sources (crates.io only), per deny.toml.
# Offline checks only: advisories need the RustSec database from GitHub.
CARGO_DENY_VERSION := 0.20.2
audit:
	@cargo deny --version 2>/dev/null | grep -qx 'cargo-deny $(CARGO_DENY_VERSION)' || \
		cargo install --locked cargo-deny@$(CARGO_DENY_VERSION)
	cargo deny check licenses bans sources

# Helm chart: lint, render every ci values file, validate strictly against Kubernetes schemas.
chart-check:
	scripts/chart-check.sh

# Dockerfile lint, native release build with the Dockerfile's command, ldd check.
package-check:
	scripts/package-check.sh

# Man pages generated from the command line's definitions, into target/man.
man:
	cargo run --quiet --bin outbox-relay -- man --out-dir target/man

services-up:
	scripts/services.sh up

services-down:
	scripts/services.sh down
