.PHONY: demo test lint services-up services-down

# The main job: services, migrations, the relay, sample messages through RabbitMQ.
demo:
	scripts/demo.sh

# The whole test suite against real Postgres and RabbitMQ.
test:
	scripts/test.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

services-up:
	scripts/services.sh up

services-down:
	scripts/services.sh down
