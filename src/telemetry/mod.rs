//! What the relay tells its operators: logs (`logs`), metric names and the Prometheus recorder
//! (`instruments`), and the gauges refreshed from the database on a schedule (`gauges`).

pub mod gauges;
pub mod instruments;
pub mod logs;

pub use logs::{init, LogConfig, LogFormat};
