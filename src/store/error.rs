//! The store's error type, and the client-side bound of a call.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(sqlx::Error),
    #[error("TLS with the database failed (check sslmode, sslrootcert and the server's certificate): {0}")]
    Tls(sqlx::Error),
    #[error("invalid database.url: {0}")]
    Url(sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the outbox schema is missing or out of date (run `outbox-relay migrate`): {0}")]
    SchemaMissing(String),
    #[error("no answer from the database within {0:?}")]
    Timeout(Duration),
}

/// `call` bounded by `limit` on the client side (see `DatabaseConfig::call_timeout`).
pub async fn within<T>(
    limit: Duration,
    call: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(limit, call)
        .await
        .unwrap_or(Err(StoreError::Timeout(limit)))
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        // A refused certificate surfaces as an I/O error carrying the rustls error.
        let tls = match &e {
            sqlx::Error::Tls(_) => true,
            sqlx::Error::Io(io) => io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>()),
            _ => false,
        };
        if tls {
            Self::Tls(e)
        } else {
            Self::Database(e)
        }
    }
}
