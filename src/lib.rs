//! outbox-relay: publishes rows of a Postgres transactional outbox to RabbitMQ, Kafka, Redis
//! Streams or NSQ.
//!
//! # Layout
//! - [`config`]: loading and validating the TOML file and environment overrides.
//! - [`store`]: every SQL statement (`src/store/sql/*.sql`), the row and status types.
//! - [`relay`]: the loop that claims committed rows, publishes them and records outcomes.
//! - [`publish`]: the [`publish::Publisher`] trait and one publisher per broker.
//! - [`sweeper`]: expiry of prepared rows and purge of finished rows.
//! - [`check_back`]: asking a prepared row's producer whether it was committed.
//! - [`lease`]: which replica publishes (a lease row in Postgres).
//! - [`http`], [`health`]: `/livez`, `/readyz`, `/metrics`.
//! - [`app`]: wires the tasks together and shuts them down.
//! - [`cli`], [`admin`]: command line and the admin commands (`status`, `dead ...`).
//! - [`telemetry`]: logging, metric names and the recorder, the database gauges.
//! - [`backoff`]: retry delays.
//!
//! The SQL schema and API live in `migrations/`; `docs/ARCHITECTURE.md` explains the design.

pub mod admin;
pub mod app;
pub mod backoff;
pub mod check_back;
pub mod cli;
pub mod config;
pub mod crash;
pub mod health;
pub mod healthcheck;
pub mod http;
pub mod lease;
pub mod partitions;
pub mod publish;
pub mod relay;
pub mod store;
pub mod sweeper;
pub mod telemetry;
