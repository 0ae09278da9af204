# syntax=docker/dockerfile:1
# Multi-stage build of outbox-relay. librdkafka, zlib and zstd are linked statically; the
# runtime image (distroless cc: glibc, libgcc, OpenSSL) has everything else the binary needs.
# CI cannot run Docker here: scripts/package-check.sh lints this file and builds the binary
# natively with the same command, then checks its shared-library needs with ldd.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS chef
# perl and make build the bundled librdkafka (its configure, not cmake); libssl-dev for its
# TLS support. aws-lc-sys (rustls) builds with cc alone: no cmake.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl-dev perl make \
 && rm -rf /var/lib/apt/lists/* \
 && cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
# The commit, for outbox_relay_build_info: the build context has no .git to ask.
ARG OUTBOX_RELAY_REVISION=unknown
COPY --from=planner /src/recipe.json recipe.json
# Dependencies only: cached until Cargo.toml or Cargo.lock change.
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked --bin outbox-relay

FROM gcr.io/distroless/cc-debian12:nonroot
ARG OUTBOX_RELAY_REVISION=unknown
LABEL org.opencontainers.image.title="outbox-relay" \
      org.opencontainers.image.description="Relays a Postgres transactional outbox to RabbitMQ or Kafka" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.revision="${OUTBOX_RELAY_REVISION}"
COPY --from=builder /src/target/release/outbox-relay /usr/local/bin/outbox-relay
COPY config.example.toml /etc/outbox-relay/config.toml
USER 65532:65532
EXPOSE 9464
STOPSIGNAL SIGTERM
# No shell or curl in the image: the binary asks its own /livez.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s \
  CMD ["/usr/local/bin/outbox-relay", "healthcheck", "--config", "/etc/outbox-relay/config.toml"]
ENTRYPOINT ["/usr/local/bin/outbox-relay"]
CMD ["run", "--config", "/etc/outbox-relay/config.toml"]
