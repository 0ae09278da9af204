//! Test hooks for crash tests: in a debug build started with `OUTBOX_RELAY_CRASH_AT=<point>`,
//! the process aborts at that point, as a kill -9 at exactly that instant would stop it.
//! Release builds compile the check out.

/// Aborts the process here if `OUTBOX_RELAY_CRASH_AT` names `point` (debug builds only).
pub fn point(point: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("OUTBOX_RELAY_CRASH_AT").is_ok_and(|p| p == point) {
        eprintln!("OUTBOX_RELAY_CRASH_AT={point}: aborting");
        std::process::abort();
    }
    #[cfg(not(debug_assertions))]
    let _ = point;
}
