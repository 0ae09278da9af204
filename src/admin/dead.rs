//! `dead list / show / requeue / discard`.

use std::fmt::Write;

use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::Output;
use crate::store::{self, DeadFilter, DeadMessage, MessageDetail, StoreError};

/// Rows a bulk requeue or discard changes per statement: each batch is one short transaction,
/// and progress is reported after each.
const BATCH: i64 = 1000;

/// How many rows `--dry-run` lists besides the count.
const DRY_RUN_SHOWN: i64 = 20;

/// What to do with dead messages; the command line's `dead` subcommands map onto it.
#[derive(Debug, Clone)]
pub enum DeadAction {
    /// List them, oldest first.
    List {
        filter: DeadFilter,
        limit: i64,
        output: Output,
    },
    /// One message; its payload only when asked.
    Show {
        id: Uuid,
        payload: bool,
        output: Output,
    },
    /// Back to committed, attempts reset.
    Requeue { filter: DeadFilter, dry_run: bool },
    /// Delete them.
    Discard { filter: DeadFilter, dry_run: bool },
}

/// A `dead` action that found nothing to act on where something was named.
#[derive(Debug, thiserror::Error)]
pub enum DeadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no message with id {0}")]
    NotFound(Uuid),
}

/// Runs a `dead` action and returns what to print; `progress` hears bulk changes as they go.
pub async fn dead(
    pool: &PgPool,
    action: &DeadAction,
    progress: &mut dyn FnMut(&str),
) -> Result<String, DeadError> {
    match action {
        DeadAction::List {
            filter,
            limit,
            output,
        } => {
            let rows = store::list_dead(pool, filter, *limit).await?;
            Ok(output.render(&rows, |rows| table(rows)))
        }
        DeadAction::Show {
            id,
            payload,
            output,
        } => {
            let message = store::show_message(pool, *id, *payload)
                .await?
                .ok_or(DeadError::NotFound(*id))?;
            let shown = Shown::from(message);
            Ok(output.render(&shown, render_shown))
        }
        DeadAction::Requeue { filter, dry_run } => {
            bulk(pool, filter, *dry_run, Change::Requeue, progress).await
        }
        DeadAction::Discard { filter, dry_run } => {
            bulk(pool, filter, *dry_run, Change::Discard, progress).await
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Change {
    Requeue,
    Discard,
}

impl Change {
    fn done(self) -> &'static str {
        match self {
            Change::Requeue => "requeued",
            Change::Discard => "discarded",
        }
    }
}

/// A requeue or discard in batches of [`BATCH`], oldest first, reporting the count after each;
/// with `dry_run`, the count and the first rows that would change, and no change.
async fn bulk(
    pool: &PgPool,
    filter: &DeadFilter,
    dry_run: bool,
    change: Change,
    progress: &mut dyn FnMut(&str),
) -> Result<String, DeadError> {
    let total = store::count_dead(pool, filter).await?;
    if dry_run {
        let rows = store::list_dead(pool, filter, DRY_RUN_SHOWN).await?;
        let mut out = format!(
            "dry run: would have {} {total} dead message(s); nothing changed\n",
            change.done()
        );
        if total > 0 {
            out.push_str(&table(&rows));
            if total > DRY_RUN_SHOWN {
                let _ = writeln!(out, "... and {} more", total - DRY_RUN_SHOWN);
            }
        }
        return Ok(out);
    }
    let mut done = 0;
    loop {
        let ids: Vec<Uuid> = store::list_dead(pool, filter, BATCH)
            .await?
            .into_iter()
            .map(|r| r.message_id)
            .collect();
        if ids.is_empty() {
            break;
        }
        let n = match change {
            Change::Requeue => store::requeue_dead(pool, &ids).await?,
            Change::Discard => store::discard_dead(pool, &ids).await?,
        };
        // Nothing changed although rows were listed: someone else acts on them; stop rather
        // than list the same rows again.
        if n == 0 {
            break;
        }
        done += n;
        progress(&format!("{} {done} of {total}", change.done()));
    }
    Ok(format!("{} {done} dead message(s)\n", change.done()))
}

fn table(rows: &[DeadMessage]) -> String {
    let mut out = format!(
        "{:<36}  {:<24} {:<16} {:>8}  LAST ERROR\n",
        "MESSAGE ID", "DESTINATION", "KEY", "ATTEMPTS"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<36}  {:<24} {:<16} {:>8}  {}",
            r.message_id,
            r.destination,
            r.message_key.as_deref().unwrap_or("-"),
            r.attempts,
            r.last_error.as_deref().unwrap_or("-")
        );
    }
    out
}

/// A message as `dead show` prints it: the payload as text when it is UTF-8, else base64.
#[derive(Debug, Serialize)]
struct Shown {
    #[serde(flatten)]
    message: MessageDetail,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_base64: Option<String>,
}

impl From<MessageDetail> for Shown {
    fn from(mut message: MessageDetail) -> Self {
        let (payload, payload_base64) = match message.payload.take() {
            None => (None, None),
            Some(bytes) => match String::from_utf8(bytes) {
                Ok(text) => (Some(text), None),
                Err(e) => {
                    use base64::Engine;
                    let b64 = base64::engine::general_purpose::STANDARD.encode(e.as_bytes());
                    (None, Some(b64))
                }
            },
        };
        Self {
            message,
            payload,
            payload_base64,
        }
    }
}

fn render_shown(s: &Shown) -> String {
    let m = &s.message;
    let mut out = String::new();
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let time = |v: &Option<chrono::DateTime<chrono::Utc>>| {
        v.map_or_else(|| "-".to_string(), |t| t.to_rfc3339())
    };
    let _ = writeln!(out, "message_id:    {}", m.message_id);
    let _ = writeln!(out, "status:        {}", m.status.as_str());
    let _ = writeln!(out, "destination:   {}", m.destination);
    let _ = writeln!(out, "routing_key:   {}", opt(&m.routing_key));
    let _ = writeln!(out, "message_key:   {}", opt(&m.message_key));
    let _ = writeln!(out, "content_type:  {}", m.content_type);
    let _ = writeln!(out, "headers:       {}", m.headers);
    let _ = writeln!(out, "attempts:      {}", m.attempts);
    let _ = writeln!(out, "producer:      {}", opt(&m.producer));
    let _ = writeln!(out, "created_at:    {}", m.created_at.to_rfc3339());
    let _ = writeln!(out, "committed_at:  {}", time(&m.committed_at));
    let _ = writeln!(out, "available_at:  {}", m.available_at.to_rfc3339());
    let _ = writeln!(out, "finished_at:   {}", time(&m.finished_at));
    let _ = writeln!(out, "last_error:\n{}", opt(&m.last_error));
    match (&s.payload, &s.payload_base64) {
        (Some(text), _) => {
            let _ = writeln!(out, "payload:\n{text}");
        }
        (None, Some(b64)) => {
            let _ = writeln!(out, "payload (base64):\n{b64}");
        }
        (None, None) => {}
    }
    out
}
