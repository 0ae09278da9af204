//! `migrate`, `migrate --status` and `migrate --print-sql`.

use std::fmt::Write;
use std::time::Duration;

use sqlx::PgPool;

use crate::store::{self, migrations, StoreError};

/// How often `migrate` reports an index build in progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// The table of `migrate --status`.
pub fn render_states(states: &Vec<migrations::MigrationState>) -> String {
    let mut out = format!(
        "{:<8} {:<28} {:<30} LOCKS\n",
        "VERSION", "MIGRATION", "APPLIED"
    );
    for s in states {
        let applied = match (s.installed_on, s.execution_ms) {
            (Some(at), Some(ms)) => format!("{} ({ms:.0} ms)", at.format("%Y-%m-%d %H:%M:%S")),
            _ => "pending".to_string(),
        };
        let _ = writeln!(
            out,
            "{:<8} {:<28} {:<30} {}",
            format!("{:04}", s.version),
            s.description,
            applied,
            if s.applied { "-" } else { s.locks }
        );
    }
    let pending = states.iter().filter(|s| !s.applied).count();
    let _ = writeln!(out, "\n{pending} pending");
    out
}

/// Applies the pending migrations, reporting index builds as they go (`progress`), and returns
/// one line per migration applied with its time, then where the schema stands.
pub async fn migrate(
    pool: &PgPool,
    watch: &PgPool,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<String, StoreError> {
    let before = migrations::states(pool).await?;
    let run = store::migrate(pool);
    tokio::pin!(run);
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.tick().await;
    loop {
        tokio::select! {
            done = &mut run => { done?; break; }
            _ = tick.tick() => {
                // Progress only informs: a failed look is skipped.
                if let Ok(builds) = store::within(PROGRESS_EVERY, migrations::index_builds(watch)).await {
                    for b in builds {
                        progress(&format!(
                            "building index {}: {}, blocks {}/{}, tuples {}/{}",
                            b.index_name.as_deref().unwrap_or("?"),
                            b.phase, b.blocks_done, b.blocks_total, b.tuples_done, b.tuples_total
                        ));
                    }
                }
            }
        }
    }
    let after = migrations::states(pool).await?;
    let mut out = String::new();
    for s in after.iter().filter(|s| s.applied) {
        let was = before.iter().any(|b| b.version == s.version && b.applied);
        if !was {
            let _ = writeln!(
                out,
                "applied {:04} {} ({:.0} ms)",
                s.version,
                s.description,
                s.execution_ms.unwrap_or(0.0)
            );
        }
    }
    let _ = writeln!(
        out,
        "outbox schema is up to date ({} migrations)",
        after.len()
    );
    Ok(out)
}
