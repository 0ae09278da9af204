//! `/livez` means "the loops turn": it fails, naming the task, when one is stuck, and never
//! because a dependency is down.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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
    config.http.livez_stall_timeout = Duration::from_secs(3);
    db.enqueue(&unique("ex"), None, serde_json::json!({"n": 1}))
        .await;
    let publisher = Arc::new(NeverAnswers::default());
    let relay = start_relay_with(config, publisher.clone()).await;
    let stop = CancellationToken::new();
    let addr = serve_health(relay.health.clone().unwrap(), stop.clone()).await;

    let (status, _) = http_get(addr, "/livez").await.expect("listening");
    assert_eq!(status, 200, "a relay that just started turns");
    wait_for("the publish to start", WAIT, || {
        let started = publisher.publishing.load(Ordering::SeqCst);
        async move { started.then_some(()) }
    })
    .await;
    // Only the relay loop waits on the publish; on a loaded machine another task may run
    // late for a moment too, so wait for the answer that names the relay.
    let body = wait_for("/livez to fail naming the relay", WAIT, || async move {
        match http_get(addr, "/livez").await {
            Some((503, body)) if body.contains("task `relay`") => Some(body),
            _ => None,
        }
    })
    .await;
    assert!(body.contains("has not turned"), "{body}");
    let out = healthcheck(addr).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("503") && said.contains("task `relay`"),
        "{said}"
    );
    stop.cancel();
    relay.stop().await;
}

/// `outbox-relay healthcheck` against a relay listening at `listen`.
async fn healthcheck(listen: std::net::SocketAddr) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_outbox-relay"))
        .args(["healthcheck", "--timeout", "5s"])
        .env_remove("OUTBOX_RELAY_CONFIG")
        .env("OUTBOX_RELAY__HTTP__LISTEN", listen.to_string())
        .output()
        .await
        .expect("run outbox-relay healthcheck")
}

#[tokio::test]
async fn healthcheck_command_passes_only_while_livez_answers_200() {
    let db = TestDb::new().await;
    let relay = RelayProcess::spawn(&db.relay_url, &[]);
    wait_for("/livez", WAIT, || async {
        (relay.get("/livez").await?.0 == 200).then_some(())
    })
    .await;
    let out = healthcheck(relay.http).await;
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
    // The unspecified address, as in the default http.listen, is asked on loopback.
    let any: std::net::SocketAddr = ([0, 0, 0, 0], relay.http.port()).into();
    assert!(healthcheck(any).await.status.success());

    drop(relay);
    let out = healthcheck(([127, 0, 0, 1], free_port()).into()).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not live"),
        "{out:?}"
    );
}

#[tokio::test]
async fn livez_stays_up_while_the_broker_is_down_for_longer_than_the_stall_timeout() {
    let db = TestDb::new().await;
    // The "broker": a port that hangs up on every connection (and notes when it came) until
    // the test turns it into a forwarder to the real RabbitMQ.
    let broker = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut url = url::Url::parse(&amqp_url()).unwrap();
    let upstream = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5672));
    url.set_port(Some(broker.local_addr().unwrap().port()))
        .unwrap();
    let forwarding = Arc::new(AtomicBool::new(false));
    let attempts: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let (on, seen) = (forwarding.clone(), attempts.clone());
    tokio::spawn(async move {
        while let Ok((mut client, _)) = broker.accept().await {
            if !on.load(Ordering::SeqCst) {
                seen.lock().unwrap().push(Instant::now());
                continue; // dropped: the relay's connect fails
            }
            let upstream = upstream.clone();
            tokio::spawn(async move {
                if let Ok(mut server) = TcpStream::connect(&upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });

    let mut config = test_config(&db);
    config.broker.amqp.url = outbox_relay::config::SecretUrl::new(url.to_string());
    config.http.listen = ([127, 0, 0, 1], free_port()).into();
    let stall = Duration::from_secs(3);
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

    // Until the relay has waited longer than the stall timeout between two reconnects, every
    // answer of /livez is 200.
    let longest_wait = || {
        let seen = attempts.lock().unwrap();
        seen.windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default()
    };
    let deadline = Instant::now() + WAIT;
    let mut answers = 0;
    while longest_wait() < stall + Duration::from_millis(500) {
        assert!(
            Instant::now() < deadline,
            "no reconnect waited longer than {stall:?}: {:?}",
            attempts.lock().unwrap()
        );
        if let Some((status, body)) = http_get(http, "/livez").await {
            assert_eq!(status, 200, "during the outage: {body}");
            answers += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answers > 10, "only {answers} answers from /livez");
    let (status, body) = http_get(http, "/readyz").await.unwrap();
    assert_eq!(
        (status, body.trim()),
        (503, "not ready: broker not connected")
    );
    assert_eq!(db.status(id).await, "committed");

    // The broker comes back: the relay, live all along, publishes.
    forwarding.store(true, Ordering::SeqCst);
    let got = rabbit.collect(&queue, 1, WAIT).await;
    assert_eq!(got[0].message_id(), id);
    db.wait_status(id, "published").await;
    relay.stop().await;
}
