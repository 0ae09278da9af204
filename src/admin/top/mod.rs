//! `outbox-relay top`: a live view of the outbox (from the database) and of the relays
//! publishing it (from their `/metrics`), refreshed every interval until `q`. Plain text
//! once with `--once`, for a terminal that is not one (`kubectl exec` without `-t`, a log).

mod sample;
mod view;

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{Event, EventStream, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::Terminal;
use sqlx::PgPool;

/// Reads get at least this long, however short the interval: a first connection to the
/// database takes longer than a refresh.
const MIN_READ_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum TopError {
    #[error("cannot draw on the terminal: {0}")]
    Terminal(#[from] std::io::Error),
}

pub struct Options {
    /// The relays' `http.listen` addresses, whose `/metrics` are read.
    pub relays: Vec<SocketAddr>,
    pub interval: Duration,
}

impl Options {
    fn read_timeout(&self) -> Duration {
        self.interval.max(MIN_READ_TIMEOUT)
    }
}

/// Refreshes until `q`, Esc or Ctrl-C. Every read is bounded (by the interval, or
/// [`MIN_READ_TIMEOUT`]), so a database or relay that does not answer shows as such instead of
/// freezing the view.
pub async fn interactive(pool: &PgPool, options: &Options) -> Result<(), TopError> {
    let mut terminal = ratatui::try_init()?;
    let shown = run(&mut terminal, pool, options).await;
    ratatui::restore();
    shown
}

async fn run(
    terminal: &mut ratatui::DefaultTerminal,
    pool: &PgPool,
    options: &Options,
) -> Result<(), TopError> {
    let footer = format!(
        "every {}   q: quit",
        humantime::format_duration(options.interval)
    );
    let mut keys = EventStream::new();
    let mut tick = tokio::time::interval(options.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut before = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = sample::sample(pool, &options.relays, options.read_timeout()).await;
                let m = view::model(before.as_ref(), &now);
                terminal.draw(|f| view::draw(f, &m, &footer))?;
                before = Some(now);
            }
            event = keys.next() => match event {
                Some(Ok(Event::Key(key))) if key.kind == KeyEventKind::Press => {
                    let ctrl_c = key.code == KeyCode::Char('c')
                        && key.modifiers.contains(KeyModifiers::CONTROL);
                    if ctrl_c || matches!(key.code, KeyCode::Char('q') | KeyCode::Esc) {
                        return Ok(());
                    }
                }
                // A resize is drawn at the next tick.
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => return Ok(()),
            },
        }
    }
}

/// Two samples an interval apart (rates need both), drawn once as plain text `width`
/// columns wide.
pub async fn once(pool: &PgPool, options: &Options, width: u16) -> String {
    let first = sample::sample(pool, &options.relays, options.read_timeout()).await;
    let mut next = tokio::time::interval_at(
        tokio::time::Instant::from_std(first.at) + options.interval,
        options.interval,
    );
    next.tick().await;
    let second = sample::sample(pool, &options.relays, options.read_timeout()).await;
    let m = view::model(Some(&first), &second);
    render(&m, width, "")
}

fn render(m: &view::Model, width: u16, footer: &str) -> String {
    let Ok(mut terminal) = Terminal::new(TestBackend::new(width, view::full_height(m)));
    let Ok(_) = terminal.draw(|f| view::draw(f, m, footer));
    let buffer = terminal.backend().buffer();
    let mut out = String::new();
    for row in buffer.content.chunks(usize::from(buffer.area.width.max(1))) {
        let line: String = row.iter().map(|c| c.symbol()).collect();
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests;
