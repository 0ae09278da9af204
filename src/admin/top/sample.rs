//! What `top` reads each round: the database's view of the outbox and each relay's
//! `/metrics`, taken at one instant so that two samples give rates.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::admin::{status, Status};
use crate::store::{self, Retrying};
use crate::telemetry::instruments;

/// Destinations shown with rows waiting for a retry.
const RETRYING_DESTINATIONS: i64 = 50;

pub struct Sample {
    pub at: Instant,
    /// The database's answer, or why there is none (shown, not fatal: it may come back).
    pub database: Result<Database, String>,
    /// One per relay address, in the order given.
    pub relays: Vec<Relay>,
}

pub struct Database {
    pub status: Status,
    pub retrying: Vec<Retrying>,
}

pub struct Relay {
    /// Its `http.listen` address, where `/metrics` is read.
    pub address: SocketAddr,
    pub metrics: Result<Metrics, String>,
}

/// The few series `top` shows, summed over the labels it does not show.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Metrics {
    pub published: BTreeMap<String, f64>,
    pub failures: BTreeMap<String, f64>,
    /// 1 while this replica holds the lease (a partitioned replica: the group lease).
    pub leader: Option<f64>,
    pub partitions_held: Option<f64>,
}

impl Metrics {
    /// The Prometheus text exposition of the relay's `/metrics`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .map_err(|e| format!("not Prometheus text: {e}"))?;
        let mut m = Metrics::default();
        for sample in scrape.samples {
            let value = match sample.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => continue,
            };
            let by_destination = match sample.metric.as_str() {
                instruments::PUBLISHED => &mut m.published,
                instruments::PUBLISH_FAILURES => &mut m.failures,
                instruments::LEADER => {
                    m.leader = Some(value);
                    continue;
                }
                instruments::PARTITIONS_HELD => {
                    m.partitions_held = Some(value);
                    continue;
                }
                _ => continue,
            };
            let destination = sample.labels.get("destination").unwrap_or("").to_string();
            *by_destination.entry(destination).or_default() += value;
        }
        Ok(m)
    }
}

/// Takes one sample; every read is bounded by `timeout`, and the reads run at once.
pub async fn sample(pool: &PgPool, relays: &[SocketAddr], timeout: Duration) -> Sample {
    let database = async {
        let read = async {
            Ok::<_, store::StoreError>(Database {
                status: status(pool).await?,
                retrying: store::retrying_by_destination(pool, RETRYING_DESTINATIONS).await?,
            })
        };
        match tokio::time::timeout(timeout, read).await {
            Ok(read) => read.map_err(|e| e.to_string()),
            Err(_) => Err(format!(
                "no answer within {}",
                humantime::format_duration(timeout)
            )),
        }
    };
    let relays = futures::future::join_all(relays.iter().map(|&address| async move {
        Relay {
            address,
            metrics: scrape(address, timeout).await,
        }
    }));
    let (database, relays) = tokio::join!(database, relays);
    Sample {
        at: Instant::now(),
        database,
        relays,
    }
}

async fn scrape(address: SocketAddr, timeout: Duration) -> Result<Metrics, String> {
    let (status, body) =
        tokio::time::timeout(timeout, crate::healthcheck::get(address, "/metrics"))
            .await
            .map_err(|_| format!("no answer within {}", humantime::format_duration(timeout)))?
            .map_err(|e| e.to_string())?;
    if status != hyper::StatusCode::OK {
        return Err(format!("/metrics answered {status}"));
    }
    Metrics::parse(&body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_the_series_top_shows_by_destination() {
        let text = r#"
# TYPE outbox_relay_messages_published_total counter
outbox_relay_messages_published_total{destination="orders"} 10
outbox_relay_messages_published_total{destination="billing"} 4
# TYPE outbox_relay_publish_failures_total counter
outbox_relay_publish_failures_total{destination="orders",reason="timeout"} 2
outbox_relay_publish_failures_total{destination="orders",reason="not_found"} 3
# TYPE outbox_relay_leader gauge
outbox_relay_leader 1
# TYPE outbox_relay_commit_to_publish_seconds histogram
outbox_relay_commit_to_publish_seconds_bucket{destination="orders",le="0.001"} 1
"#;
        let m = Metrics::parse(text).unwrap();
        assert_eq!(m.published["orders"], 10.0);
        assert_eq!(m.published["billing"], 4.0);
        assert_eq!(m.failures["orders"], 5.0, "summed over reasons");
        assert_eq!(m.leader, Some(1.0));
        assert_eq!(m.partitions_held, None);
    }
}
