//! `/livez` means "the loops turn": it fails, naming the task, when one is stuck, and never
//! because a dependency is down.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use outbox_relay::publish::{PublishError, Publisher};
use outbox_relay::store::OutboxMessage;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

/// A broker client whose publishes never finish and that has no timeout of its own: the kind
/// of bug that wedges the relay loop without any error to log.
#[derive(Default)]
struct NeverAnswers {
    publishing: AtomicBool,
}

impl Publisher for NeverAnswers {
    async fn ready(&self) -> Result<(), PublishError> {
        Ok(())
    }

    async fn publish(&self, _message: &OutboxMessage) -> Result<(), PublishError> {
        self.publishing.store(true, Ordering::SeqCst);
        std::future::pending().await
    }

    async fn close(&self) {}
}

/// Serves `/livez` for an in-process relay on a loopback port of its own.
async fn serve_health(
    health: Arc<outbox_relay::health::Health>,
    stop: CancellationToken,
) -> std::net::SocketAddr {
    let listener = outbox_relay::http::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(outbox_relay::http::serve(listener, health, None, stop));
    addr
}

#[tokio::test]
async fn livez_fails_naming_the_relay_loop_once_it_stops_turning() {
    let db = TestDb::new().await;
    let mut config = test_config(&db);
    // One row in flight leaves no room for another claim: the loop then waits on the publish.
    config.relay.batch_size = 2.try_into().unwrap();
    config.relay.shutdown_grace = Duration::from_millis(200);
    config.http.livez_stall_timeout = Duration::from_secs(1);
    db.enqueue(&unique("ex"), None, serde_json::json!({"n": 1}))
        .await;
    let publisher = Arc::new(NeverAnswers::default());
    let relay = start_relay_with(&db, config, publisher.clone()).await;
    let stop = CancellationToken::new();
    let addr = serve_health(relay.health.clone().unwrap(), stop.clone()).await;

    let (status, _) = http_get(addr, "/livez").await.expect("listening");
    assert_eq!(status, 200, "a relay that just started turns");
    wait_for("the publish to start", WAIT, || {
        let started = publisher.publishing.load(Ordering::SeqCst);
        async move { started.then_some(()) }
    })
    .await;
    let body = wait_for("/livez to fail", WAIT, || async move {
        match http_get(addr, "/livez").await {
            Some((503, body)) => Some(body),
            _ => None,
        }
    })
    .await;
    assert!(body.contains("task `relay`"), "{body}");
    stop.cancel();
    relay.stop().await;
}

#[tokio::test]
async fn livez_stays_up_while_the_broker_is_down_for_longer_than_the_stall_timeout() {
    let db = TestDb::new().await;
    // The "broker": a port that takes connections into its backlog and never answers, until
    // the test starts forwarding it to the real RabbitMQ.
    let broker = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = test_config(&db);
    let mut url = url::Url::parse(&amqp_url()).unwrap();
    let upstream = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5672));
    url.set_port(Some(broker.local_addr().unwrap().port()))
        .unwrap();
    config.broker.amqp.url = outbox_relay::config::SecretUrl::new(url.to_string());
    config.broker.amqp.connect_timeout = Duration::from_millis(300);
    config.http.listen = ([127, 0, 0, 1], free_port()).into();
    let stall = Duration::from_secs(1);
    config.http.livez_stall_timeout = stall;
    // Reconnects back off to well past the stall timeout: only announcing those waits keeps
    // the relay live through them.
    config.retry.max_backoff = 3 * stall;
    let rabbit = Rabbit::connect().await;
    let (exchange, queue) = rabbit.fanout_with_queue().await;
    let id = db
        .enqueue(&exchange, None, serde_json::json!({"n": 1}))
        .await;
    let http = config.http.listen;
    let relay = start_relay(config);

    let outage = 5 * stall;
    let start = Instant::now();
    let mut polls = 0;
    while start.elapsed() < outage {
        if let Some((status, body)) = http_get(http, "/livez").await {
            assert_eq!(status, 200, "after {:?} of outage: {body}", start.elapsed());
            polls += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(polls > 20, "only {polls} answers from /livez");
    let (status, body) = http_get(http, "/readyz").await.unwrap();
    assert_eq!(
        (status, body.trim()),
        (503, "not ready: broker not connected"),
        "the outage lasted the whole time"
    );
    assert_eq!(db.status(id).await, "committed");

    // The broker comes back: the relay, which was live all along, publishes.
    tokio::spawn(async move {
        while let Ok((mut client, _)) = broker.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                if let Ok(mut server) = TcpStream::connect(&upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    let got = rabbit.collect(&queue, 1, WAIT).await;
    assert_eq!(got[0].message_id(), id);
    db.wait_status(id, "published").await;
    relay.stop().await;
}
