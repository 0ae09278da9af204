//! The verifier's Redis consumer: reads the stream directly from Redis (not through the proxy)
//! with XREAD from the last id read, reconnecting while the server restarts.

use std::time::{Duration, Instant, UNIX_EPOCH};

use redis::streams::StreamReadReply;
use uuid::Uuid;

use crate::consume::{instant_at, key_of, ConsumerTask};
use crate::verify::Deliveries;

pub fn consume_redis(url: String, stream: String, into: Deliveries) -> ConsumerTask {
    // Entry ids only grow, so reading on from the last one never reads an entry twice.
    let last = "0".to_string();
    ConsumerTask::repeat(
        (url, stream, last, into),
        |(url, stream, mut last, into)| async move {
            session(&url, &stream, &mut last, &into).await;
            (url, stream, last, into)
        },
    )
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

/// When Redis appended the entry: the milliseconds of its id. The verifier's own reads wait on
/// restarts.
fn appended_at(entry_id: &str) -> Instant {
    let Some(ms) = entry_id
        .split('-')
        .next()
        .and_then(|ms| ms.parse::<u64>().ok())
    else {
        return Instant::now();
    };
    instant_at(UNIX_EPOCH + Duration::from_millis(ms))
}
