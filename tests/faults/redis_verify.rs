//! The verifier's Redis consumer: reads the stream directly from Redis (not through the proxy)
//! with XREAD from the last id read, reconnecting while the server restarts.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::streams::StreamReadReply;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::verify::{key_of, ConsumerTask, Deliveries};

pub fn consume_redis(url: String, stream: String, into: Deliveries) -> ConsumerTask {
    let stop = CancellationToken::new();
    let token = stop.clone();
    let handle = tokio::spawn(async move {
        // Entry ids only grow, so reading on from the last one never reads an entry twice.
        let mut last = "0".to_string();
        while !token.is_cancelled() {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = session(&url, &stream, &mut last, &into) => {}
            }
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    });
    ConsumerTask::new(stop, handle)
}

/// Reads until the connection fails; every step bounded, as a connection opened while the
/// server stops can stay silent.
async fn session(url: &str, stream: &str, last: &mut String, into: &Deliveries) {
    let step = Duration::from_secs(5);
    let settings = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(step))
        .set_response_timeout(Some(step));
    let Ok(client) = redis::Client::open(url) else {
        return;
    };
    let Ok(mut con) = client
        .get_multiplexed_async_connection_with_config(&settings)
        .await
    else {
        return;
    };
    loop {
        let reply: Result<Option<StreamReadReply>, _> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(500)
            .arg("BLOCK")
            .arg(1000)
            .arg("STREAMS")
            .arg(stream)
            .arg(last.as_str())
            .query_async(&mut con)
            .await;
        let Ok(reply) = reply else { return };
        for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
            *last = entry.id.clone();
            let field = |name: &str| -> Vec<u8> {
                entry
                    .map
                    .get(name)
                    .and_then(|v| redis::from_redis_value_ref::<Vec<u8>>(v).ok())
                    .unwrap_or_default()
            };
            let Ok(id) = String::from_utf8_lossy(&field("message_id")).parse::<Uuid>() else {
                continue;
            };
            into.record_at(id, key_of(&field("payload")), false, appended_at(&entry.id));
        }
    }
}

/// When Redis appended the entry: the milliseconds of its id, as an `Instant` of this process
/// (the server shares its clock). The verifier's own reads wait on restarts.
fn appended_at(entry_id: &str) -> Instant {
    let now = Instant::now();
    let Some(ms) = entry_id
        .split('-')
        .next()
        .and_then(|ms| ms.parse::<u64>().ok())
    else {
        return now;
    };
    let ago = SystemTime::now()
        .duration_since(UNIX_EPOCH + Duration::from_millis(ms))
        .unwrap_or_default();
    now.checked_sub(ago).unwrap_or(now)
}
