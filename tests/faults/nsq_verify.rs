//! The verifier's NSQ consumer: one subscriber of the topic's channel, directly on nsqd (not
//! through the proxy), finishing every message as it reads it and subscribing again while the
//! server restarts.
//!
//! With nsqd's --mem-queue-size=0 a channel's messages wait in its on-disk queue, which hands
//! them out in the order they were put in, so a consumer alone on the channel that finishes
//! everything gets each message the first time in the order nsqd took it. Two things of nsqd's
//! bring a message again:
//! - a kill -9 leaves the queues' read positions as last synced (after every operation in the
//!   fault suite: OUTBOX_NSQ_SYNC_EVERY=1): nsqd reads on from there, and delivers messages
//!   again under the same nsqd id and attempts 1. The consumer recognises them by the id: its
//!   own redeliveries, not duplicates. Where nsqd mends its queues' positions it can deliver
//!   a message for the first time after later ones of its key; nsqd's timestamps show it took
//!   them in order, and the check counts those apart ("reordered in broker").
//! - a clean stop puts the messages in flight to the consumer (written to it, not finished)
//!   at the end of the channel's queue. The consumer may not have received one (the socket
//!   closed first); it then arrives after later messages, with attempts 2. Such a first
//!   delivery is marked requeued, and the check counts it apart from order violations: where
//!   nsqd put it back says nothing of the order the relay published in.
//!
//! And one thing of nsqd's loses messages it acknowledged: it keeps the messages in flight to a
//! consumer in memory only, off the channel's on-disk queue, so a kill -9 that comes after a
//! sync of the queue's read position loses those the consumer had not read yet (seen once in
//! CI: 204 in a row). A second channel, [`HOLD`], that nobody reads during the run keeps every
//! message nsqd took; at the end, the messages the verifier's channel never delivered are
//! looked up there, and those found count as nsqd's, not as lost by the relay. What neither
//! channel has counts as nsqd's only if the relay marked it published shortly before a kill -9
//! of nsqd (`NSQD_UNSYNCED` in fault.rs): nsqd skips unsynced writes when it starts again.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::common::nsq::consumer::{Message, Subscription};
use crate::consume::{instant_at, ConsumerTask};
use crate::verify::{Deliveries, Delivery};

/// Bounds each step: connecting, and the silence after which a connection counts as dead
/// (nsqd sends a heartbeat every second).
const STEP: Duration = Duration::from_secs(5);

/// The verifier's channel; created by its first subscription, before the relay publishes.
pub const CHANNEL: &str = "verifier";

/// The second channel: created before the relay publishes, read only at the end.
pub const HOLD: &str = "held";

/// Creates the [`HOLD`] channel: a subscription that takes nothing, closed at once.
pub async fn open_hold(address: &str, topic: &str) -> std::io::Result<()> {
    Subscription::open(address, topic, HOLD, 0, STEP)
        .await
        .map(drop)
}

/// Reads the [`HOLD`] channel until every id of `wanted` has come, or until `within` has
/// passed; returns those found.
pub async fn read_held(
    address: &str,
    topic: &str,
    wanted: &HashSet<Uuid>,
    within: Duration,
) -> HashSet<Uuid> {
    let deadline = Instant::now() + within;
    let mut found = HashSet::new();
    while found.len() < wanted.len() && Instant::now() < deadline {
        let Ok(mut held) = Subscription::open(address, topic, HOLD, 500, STEP).await else {
            break;
        };
        while found.len() < wanted.len() {
            let Ok(m) = held.next(deadline.min(Instant::now() + STEP)).await else {
                break;
            };
            if let Some(d) = delivery(&m).filter(|d| wanted.contains(&d.id)) {
                found.insert(d.id);
            }
        }
    }
    found
}

pub fn consume_nsq(address: String, topic: String, into: Deliveries) -> ConsumerTask {
    ConsumerTask::repeat(
        (address, topic, HashSet::new(), into),
        |(address, topic, mut read, into)| async move {
            session(&address, &topic, &mut read, &into).await;
            (address, topic, read, into)
        },
    )
}

/// Reads until the connection fails. `read`: the nsqd ids read so far.
async fn session(address: &str, topic: &str, read: &mut HashSet<[u8; 16]>, into: &Deliveries) {
    let Ok(mut subscription) = Subscription::open(address, topic, CHANNEL, 500, STEP).await else {
        return;
    };
    while let Ok(m) = subscription.next(Instant::now() + STEP).await {
        let redelivered = !read.insert(m.id) || m.attempts > 1;
        if let Some(delivery) = delivery(&m) {
            into.record_delivery(delivery, redelivered);
        }
    }
}

/// The row a message carries: its envelope's `id`, and the key in its JSON payload (`data`).
/// The time is when nsqd took the message: the verifier's own reads wait on restarts.
fn delivery(m: &Message) -> Option<Delivery> {
    let event: serde_json::Value = serde_json::from_slice(&m.body).ok()?;
    let id: Uuid = event["id"].as_str()?.parse().ok()?;
    let key = event["data"]["key"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    Some(Delivery {
        id,
        key,
        at: instant_at(m.timestamp),
        requeued: m.attempts > 1,
    })
}
