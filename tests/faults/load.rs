//! The load generator: writer tasks using the SQL API over many keys, each payload carrying
//! its key and a per-key number so every delivery can be identified.

use std::collections::HashMap;
use std::time::Duration;

use rand::Rng;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// What a writer does with one message.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Enqueue,
    PrepareCommit,
    PrepareRollback,
    /// Prepared with a short ttl and never resolved: the sweeper must expire it.
    PrepareAbandon,
}

impl Kind {
    fn pick(rng: &mut impl Rng) -> Self {
        match rng.random_range(0..100) {
            0..55 => Self::Enqueue,
            55..80 => Self::PrepareCommit,
            80..90 => Self::PrepareRollback,
            _ => Self::PrepareAbandon,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Enqueue => "enqueue",
            Self::PrepareCommit => "prepare_commit",
            Self::PrepareRollback => "prepare_rollback",
            Self::PrepareAbandon => "prepare_abandon",
        }
    }
}

pub struct Load {
    stop: CancellationToken,
    writers: Vec<JoinHandle<u64>>,
}

impl Load {
    /// `rate` messages per second in total over `writers` tasks; writer `w` owns the keys
    /// `w{w}-k{0..keys_per_writer}`.
    pub fn start(
        pool: PgPool,
        destination: &str,
        writers: usize,
        keys_per_writer: usize,
        rate: f64,
    ) -> Self {
        let stop = CancellationToken::new();
        let period = Duration::from_secs_f64(writers as f64 / rate);
        let writers = (0..writers)
            .map(|w| {
                tokio::spawn(writer(
                    pool.clone(),
                    destination.to_string(),
                    w,
                    keys_per_writer,
                    period,
                    stop.clone(),
                ))
            })
            .collect();
        Self { stop, writers }
    }

    /// Stops writing; returns how many SQL calls failed (while the database was down).
    pub async fn stop(self) -> u64 {
        self.stop.cancel();
        let mut errors = 0;
        for w in self.writers {
            errors += w.await.expect("writer task");
        }
        errors
    }
}

async fn writer(
    pool: PgPool,
    destination: String,
    writer: usize,
    keys: usize,
    period: Duration,
    stop: CancellationToken,
) -> u64 {
    let mut next_n: HashMap<usize, i64> = HashMap::new();
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut errors = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return errors,
            _ = ticks.tick() => {}
        }
        let (k, kind) = {
            let mut rng = rand::rng();
            (rng.random_range(0..keys), Kind::pick(&mut rng))
        };
        let n = next_n.entry(k).or_insert(0);
        *n += 1;
        let key = format!("w{writer}-k{k}");
        let payload = serde_json::json!({ "key": key, "n": *n, "kind": kind.name() });
        if write(&pool, &destination, &key, payload, kind)
            .await
            .is_err()
        {
            // The database is being restarted or the connection was cut; whatever state the
            // row reached is what the verifier reads afterwards.
            errors += 1;
        }
    }
}

async fn write(
    pool: &PgPool,
    destination: &str,
    key: &str,
    payload: serde_json::Value,
    kind: Kind,
) -> Result<(), sqlx::Error> {
    if let Kind::Enqueue = kind {
        sqlx::query("SELECT outbox.enqueue($1, $2, message_key => $3)")
            .bind(destination)
            .bind(&payload)
            .bind(key)
            .execute(pool)
            .await?;
        return Ok(());
    }
    let ttl = match kind {
        Kind::PrepareAbandon => "1 second",
        _ => "1 minute",
    };
    let id: Uuid = sqlx::query_scalar(
        "SELECT outbox.prepare($1, $2, message_key => $3, ttl => $4::text::interval)",
    )
    .bind(destination)
    .bind(&payload)
    .bind(key)
    .bind(ttl)
    .fetch_one(pool)
    .await?;
    let resolve = match kind {
        Kind::PrepareCommit => "SELECT outbox.commit($1)",
        Kind::PrepareRollback => "SELECT outbox.rollback($1)",
        _ => return Ok(()),
    };
    sqlx::query(resolve).bind(id).execute(pool).await?;
    Ok(())
}
