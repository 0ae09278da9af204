//! TLS test support: the local CA and server certificate that `scripts/services.sh` generates
//! (Postgres and RabbitMQ serve it), and a Kafka-protocol broker reachable only through TLS.

use std::path::PathBuf;
use std::sync::Arc;

use rdkafka::ClientConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// Where services.sh put the certificates (`OUTBOX_TEST_TLS_DIR`).
pub fn tls_dir() -> PathBuf {
    std::env::var_os("OUTBOX_TEST_TLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".local/tls"))
}

fn tls_file(name: &str) -> String {
    let path = tls_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: start the services with this repository's scripts/services.sh up",
        path.display()
    );
    path.display().to_string()
}

/// The CA that signed the servers' certificate.
pub fn ca() -> String {
    tls_file("ca.pem")
}

/// A CA that signed nothing the servers present.
pub fn other_ca() -> String {
    tls_file("other-ca.pem")
}

/// RabbitMQ's TLS listener.
pub fn amqps_url() -> String {
    std::env::var("OUTBOX_TEST_AMQPS_URL")
        .unwrap_or_else(|_| "amqps://guest:guest@127.0.0.1:56734/%2f".into())
}

/// Fails at once, saying what to do, when the shared services were started without TLS (by
/// an older scripts/services.sh), instead of letting a TLS test time out.
pub async fn require_tls_services(db: &super::TestDb) {
    const HINT: &str = "the test services run without TLS (started by an older \
                        scripts/services.sh): run scripts/services.sh down, then up";
    let ssl: String = sqlx::query_scalar("SHOW ssl")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(ssl, "on", "Postgres: {HINT}");
    let amqps = url::Url::parse(&amqps_url()).unwrap();
    let addr = (amqps.host_str().unwrap().to_string(), amqps.port().unwrap());
    assert!(
        TcpStream::connect(addr).await.is_ok(),
        "RabbitMQ amqps listener {}: {HINT}",
        amqps.port().unwrap()
    );
    ca();
}

/// `url` with `sslmode=verify-full` against the CA file `ca`.
pub fn verify_full(url: &str, ca: &str) -> String {
    let mut u = url::Url::parse(url).unwrap();
    u.query_pairs_mut()
        .append_pair("sslmode", "verify-full")
        .append_pair("sslrootcert", ca);
    u.to_string()
}

/// A TLS-terminating proxy on a loopback port of its own, forwarding to a plain TCP port and
/// presenting the certificate `<cert>.pem` from the TLS directory (`server` is valid for
/// 127.0.0.1; `wrong-host` is signed by the same CA for another name).
pub struct TlsProxy {
    pub port: u16,
    task: JoinHandle<()>,
}

impl TlsProxy {
    pub async fn start(cert: &str, upstream_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, cert, upstream_port)
    }

    fn serve(listener: TcpListener, cert: &str, upstream_port: u16) -> Self {
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(proxy(listener, acceptor(cert), upstream_port));
        Self { port, task }
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The shared Kafka broker's TLS listeners (scripts/kafka.sh): one presents the server
/// certificate for 127.0.0.1/localhost, the other one of the same CA for another host name.
pub struct TlsKafka {
    pub bootstrap: String,
}

impl TlsKafka {
    /// The listener presenting `cert`: `server` or `wrong-host`.
    pub fn listener(cert: &str) -> Self {
        let (var, default) = match cert {
            "server" => ("OUTBOX_TEST_KAFKA_TLS_BOOTSTRAP", "127.0.0.1:62092"),
            "wrong-host" => ("OUTBOX_TEST_KAFKA_WRONG_HOST_BOOTSTRAP", "127.0.0.1:62093"),
            other => panic!("no Kafka TLS listener presents `{other}`"),
        };
        Self {
            bootstrap: std::env::var(var).unwrap_or_else(|_| default.to_string()),
        }
    }

    /// librdkafka properties for TLS to this broker, trusting the CA file `ca`.
    pub fn properties(ca: &str) -> [(&'static str, String); 3] {
        [
            ("security.protocol", "ssl".to_string()),
            ("ssl.ca.location", ca.to_string()),
            ("ssl.endpoint.identification.algorithm", "https".to_string()),
        ]
    }

    /// A client configuration for this broker over TLS with the right CA.
    pub fn client(&self) -> ClientConfig {
        let mut c = super::kafka::client_config(&self.bootstrap);
        for (k, v) in Self::properties(&ca()) {
            c.set(k, v);
        }
        c
    }
}

/// A TLS acceptor presenting `cert` (`server` or `wrong-host`) of the local CA.
pub fn acceptor(cert: &str) -> TlsAcceptor {
    let certs = CertificateDer::pem_file_iter(tls_file(&format!("{cert}.pem")))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(tls_file(&format!("{cert}.key"))).unwrap();
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    TlsAcceptor::from(Arc::new(config))
}

async fn proxy(listener: TcpListener, acceptor: TlsAcceptor, upstream_port: u16) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            // A client that refuses the certificate ends the handshake: nothing to forward.
            let Ok(mut tls) = acceptor.accept(client).await else {
                return;
            };
            let Ok(mut upstream) = TcpStream::connect(("127.0.0.1", upstream_port)).await else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
        });
    }
}
