//! The ceilings: the database path with an instant publisher, both halves at once, drains.

use super::*;

/// A fresh outbox and the configuration of a relay that drains it in-process;
/// `published_retention` zero means delete on publish.
pub(crate) async fn ceiling_outbox(
    outbox: Outbox<'_>,
    published_retention: Duration,
) -> (PgPool, Config) {
    let (pool, url) = fresh_db().await;
    fill(&pool, outbox.exchange, outbox.rows).await;
    // The relay settings the drains run with (BENCH_RELAY__*), so that a drain is compared
    // with a ceiling of the same batch size and in-flight bound.
    let overrides = figment::Figment::new()
        .merge(figment::providers::Env::prefixed("BENCH_RELAY__").split("__"));
    let mut config = Config::from_figment(&overrides).expect("BENCH_RELAY__ settings");
    config.database.url = SecretUrl::new(url);
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.log.format = LogFormat::Text;
    config.sweeper.published_retention = published_retention;
    (pool, config)
}

/// The relay's own claim and outcome path on a fresh outbox, with a publisher that confirms at
/// once.
pub(crate) async fn database_ceiling_of(
    f: &mut Figures,
    outbox: Outbox<'_>,
    name: &str,
    published_retention: Duration,
) -> f64 {
    let (pool, config) = ceiling_outbox(outbox, published_retention).await;
    let drained = CancellationToken::new();
    let drain = drain_in_process(&pool, config, InstantPublisher, outbox.rows, &drained);
    quiet().await;
    ceiling(f, name, drain).await
}

/// One way round of both halves of a drain to Kafka: the database path on a fresh outbox with
/// `publisher`, beside Kafka traffic of its own until the drain is seen done. Records both
/// rates and each side against `target`; the flat-out side is the one not held to a rate
/// (Kafka when `kafka.rate` is infinite, the database path otherwise).
pub(crate) async fn both_halves_way<P: Publisher>(
    f: &mut Figures,
    outbox: Outbox<'_>,
    name: &str,
    published_retention: Duration,
    publisher: P,
    kafka: KafkaAlongside<'_>,
    target: f64,
) {
    let (pool, config) = ceiling_outbox(outbox, published_retention).await;
    let producer = bench_producer(kafka.bootstrap);
    quiet().await;
    // Connected before the clock starts: in a drain of one to three seconds, the connection
    // set-up would otherwise be a good part of the Kafka side's time.
    kafka_at_rate(
        &producer,
        kafka.topic,
        f64::INFINITY,
        &CancellationToken::new(),
        1,
    )
    .await;
    let stop = CancellationToken::new();
    let traffic = {
        let (topic, rate, stop) = (kafka.topic.to_string(), kafka.rate, stop.clone());
        tokio::spawn(async move { kafka_at_rate(&producer, &topic, rate, &stop, usize::MAX).await })
    };
    let drain = drain_in_process(&pool, config, publisher, outbox.rows, &stop);
    let database = ceiling(f, name, drain).await;
    let alongside = traffic.await.unwrap();
    let alongside = f.add(format!("{name}: Kafka alongside"), alongside, "msg/s");
    let (flat_out, paced) = if kafka.rate.is_finite() {
        (database, alongside)
    } else {
        (alongside, database)
    };
    f.add(
        format!("{name}: flat-out side / target"),
        flat_out / target,
        "x",
    );
    f.add(format!("{name}: paced side / target"), paced / target, "x");
}

/// A fresh outbox of `rows` committed rows for `exchange`, in a database of its own.
#[derive(Clone, Copy)]
pub(crate) struct Outbox<'a> {
    pub(crate) exchange: &'a str,
    pub(crate) rows: i64,
}

/// Kafka traffic to run beside the database path.
#[derive(Clone, Copy)]
pub(crate) struct KafkaAlongside<'a> {
    pub(crate) bootstrap: &'a str,
    pub(crate) topic: &'a str,
    /// Messages a second; infinite for as many as the in-flight limit allows.
    pub(crate) rate: f64,
}

/// Runs `measure` (a ceiling) and records its rate and how busy the machine was meanwhile:
/// a ceiling that keeps both cores busy leaves no room for anything running beside it.
pub(crate) async fn ceiling(
    f: &mut Figures,
    name: &str,
    measure: impl std::future::Future<Output = f64>,
) -> f64 {
    let before = machine_jiffies();
    let rate = measure.await;
    f.add(
        format!("{name}: machine busy (all cores)"),
        busy_between(before, machine_jiffies()),
        "%",
    );
    f.add(name.to_string(), rate, "msg/s")
}

/// Drains `rows` committed rows with the relay binary; the relay keeps running afterwards.
pub(crate) async fn drain(
    pool: &PgPool,
    db_url: &str,
    broker: Broker,
    rows: i64,
    label: &str,
    settings: &[(&str, &str)],
) -> DrainFigures {
    quiet().await;
    let (cpu_before, jiffies_before) = (cpu_by_process(), machine_jiffies());
    let started = Instant::now();
    let relay = spawn_relay(db_url, broker, label, settings);
    wait_drained(pool).await;
    let elapsed = started.elapsed();
    let rate = rows as f64 / elapsed.as_secs_f64();
    // None with delete on publish: the rows are gone. Then the whole time counts.
    let span: Option<f64> = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM max(published_at) - min(published_at))::float8 \
         FROM outbox.messages",
    )
    .fetch_one(pool)
    .await
    .expect("published_at span");
    let span = span.unwrap_or(elapsed.as_secs_f64());
    let (machine_busy, cpu_by_command) = cpu_since(&cpu_before, jiffies_before, Some(relay.pid()));
    let in_flight = mean_in_flight(&relay, span).await;
    DrainFigures {
        rate,
        publishing_rate: rows as f64 / span.max(1e-3),
        start_up: elapsed.saturating_sub(Duration::from_secs_f64(span)),
        cpu_by_command,
        machine_busy,
        in_flight,
        peak_rss_mib: relay.peak_rss_mib(),
        cpu_seconds: relay.cpu_seconds(),
        relay,
    }
}

/// Share of one core the relay uses over `secs` with nothing to publish.
pub(crate) async fn idle_cpu_percent(relay: &RelayProcess, secs: u64) -> f64 {
    idle_cpu_percent_of(std::slice::from_ref(relay), secs).await
}

/// Share of one core several relays use together over `secs` with nothing to publish.
pub(crate) async fn idle_cpu_percent_of(relays: &[RelayProcess], secs: u64) -> f64 {
    let cpu = || relays.iter().map(RelayProcess::cpu_seconds).sum::<f64>();
    let before = cpu();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    (cpu() - before) / secs as f64 * 100.0
}

/// Publishes awaiting the broker's answer, on average over `span` seconds of publishing
/// (Little's law: the broker-ack histogram's total time over the span), with the mean time
/// to an answer in milliseconds. A drain whose window stands part empty loses to its ceiling
/// in the relay's pipeline; one with a full window, in the broker's answers.
async fn mean_in_flight(relay: &RelayProcess, span: f64) -> Option<(f64, f64)> {
    let total = relay.metric("outbox_relay_broker_ack_seconds_sum").await?;
    let count = relay
        .metric("outbox_relay_broker_ack_seconds_count")
        .await?;
    (count > 0.0).then(|| (total / span.max(1e-3), total / count * 1000.0))
}

/// The figures every drain reports under `name` besides its rate; `lower`: the lower of its
/// ceilings, if measured in this run.
pub(crate) fn add_drain_figures(f: &mut Figures, name: &str, d: &DrainFigures, lower: Option<f64>) {
    if let Some(lower) = lower {
        f.add(
            format!("drain to {name} / lower of its ceiling and the database's"),
            d.rate / lower,
            "x",
        );
    }
    f.add(
        format!("drain to {name}: relay peak RSS"),
        d.peak_rss_mib,
        "MiB",
    );
    f.add(format!("drain to {name}: relay CPU"), d.cpu_seconds, "s");
    f.add(
        format!("drain to {name}: machine busy (all cores)"),
        d.machine_busy,
        "%",
    );
    if let Some(lower) = lower {
        // What the machine would have to give if the drain ran at its target with the CPU per
        // message it took here: over 100 % puts the target out of this machine's reach, however
        // the relay's pipeline were arranged, unless the work per message falls.
        f.add(
            format!("drain to {name}: machine busy at its target rate, at this CPU per message"),
            d.machine_busy * TARGET * lower / d.rate,
            "%",
        );
    }
    if let Some((mean, answer_ms)) = d.in_flight {
        f.add(
            format!(
                "drain to {name}: publishes in flight (mean, of {})",
                in_flight()
            ),
            mean,
            "messages",
        );
        f.add(
            format!("drain to {name}: publish to broker answer (mean)"),
            answer_ms,
            "ms",
        );
    }
    for (comm, used) in &d.cpu_by_command {
        f.add(format!("drain to {name}: CPU of {comm}"), *used, "s");
    }
}
