//! Backpressure on the broker: publishes awaiting a confirm stay within relay.max_in_flight.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{start_relay_with, test_config, Rabbit, TestDb};
use outbox_relay::publish::amqp::AmqpPublisher;
use outbox_relay::publish::{PublishError, Publisher};
use outbox_relay::store::OutboxMessage;

const WAIT: Duration = Duration::from_secs(60);

/// The relay's own RabbitMQ publisher, counting the publishes that await their confirm.
struct CountingPublisher {
    inner: AmqpPublisher,
    awaiting: AtomicUsize,
    peak: AtomicUsize,
}

impl Publisher for CountingPublisher {
    async fn ready(&self) -> Result<(), PublishError> {
        self.inner.ready().await
    }

    async fn publish(&self, message: &OutboxMessage) -> Result<(), PublishError> {
        let now = self.awaiting.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        let result = self.inner.publish(message).await;
        self.awaiting.fetch_sub(1, Ordering::SeqCst);
        result
    }

    async fn close(&self) {
        self.inner.close().await
    }
}

#[tokio::test]
async fn publishes_awaiting_a_confirm_never_exceed_max_in_flight() {
    let db = TestDb::new().await;
    let rabbit = Rabbit::connect().await;
    let (exchange, queue) = rabbit.fanout_with_queue().await;
    // A backlog of many keys, so that far more chains could run than the window allows.
    let ids = db.enqueue_many(&exchange, 1, 300, 300).await;
    let mut config = test_config(&db);
    config.relay.max_in_flight = 8.try_into().unwrap();
    let publisher = Arc::new(CountingPublisher {
        inner: AmqpPublisher::new(config.broker.amqp.clone(), config.relay.publish_timeout),
        awaiting: AtomicUsize::new(0),
        peak: AtomicUsize::new(0),
    });
    let relay = start_relay_with(config, publisher.clone()).await;

    assert_eq!(
        rabbit.collect(&queue, ids.len(), WAIT).await.len(),
        ids.len()
    );
    relay.stop().await;
    // The first claim alone brings 100 chains, so the window fills at once.
    assert_eq!(publisher.peak.load(Ordering::SeqCst), 8);
}
