//! The relay binary as a child process, and plain HTTP requests to its listener.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{amqp_url, kafka, unique, wait_for, Broker};

/// The relay binary as a child process, configured through environment variables, its
/// stderr (text logs) and stdout captured to one file or, as the bench has it, two.
pub struct RelayProcess {
    pub child: std::process::Child,
    /// Its stdout (and stderr, unless [`RelayOptions::log`] put that apart).
    pub log: PathBuf,
    pub http: std::net::SocketAddr,
}

/// How [`RelayProcess::spawn_with`] starts the relay; the default is the tests' way.
#[derive(Debug, Clone, Default)]
pub struct RelayOptions {
    /// Sets `broker.kind`, the Kafka bootstrap servers ([`kafka::bootstrap`]), the Redis URL and
    /// the nsqd address; `None` leaves them to the relay's defaults and the caller's variables.
    pub broker: Option<Broker>,
    /// The relay's own defaults for the lease, polling, backoff, gauges and log level (what
    /// the bench measures) instead of the tests' short intervals.
    pub default_timing: bool,
    /// stdout to this file and stderr beside it (extension `stderr`), instead of both to one
    /// new file in the temporary directory.
    pub log: Option<PathBuf>,
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RelayProcess {
    /// The tests' relay: short lease, polling, backoff and gauge intervals, RabbitMQ at
    /// [`amqp_url`]; `extra_env` (OUTBOX_RELAY__* variables) comes last.
    pub fn spawn(db_url: &str, extra_env: &[(&str, &str)]) -> Self {
        Self::spawn_with(db_url, &RelayOptions::default(), extra_env)
    }

    pub fn spawn_with(db_url: &str, options: &RelayOptions, extra_env: &[(&str, &str)]) -> Self {
        let (log, stdout, stderr) = match &options.log {
            None => {
                let log = std::env::temp_dir().join(format!("{}.log", unique("relay")));
                let file = std::fs::File::create(&log).expect("log file");
                (log, file.try_clone().expect("log file"), file)
            }
            Some(log) => (
                log.clone(),
                std::fs::File::create(log).expect("relay log"),
                std::fs::File::create(log.with_extension("stderr")).expect("relay log"),
            ),
        };
        let http: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
        // OUTBOX_TEST_RELAY_BIN runs another build of the relay under the same harness: the
        // bench compares builds with it (docs/performance.md).
        let binary = std::env::var_os("OUTBOX_TEST_RELAY_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_outbox-relay").into());
        let mut cmd = std::process::Command::new(binary);
        cmd.arg("run")
            .env("OUTBOX_RELAY__HTTP__LISTEN", http.to_string())
            .env_remove("OUTBOX_RELAY_CONFIG")
            .env("OUTBOX_RELAY__DATABASE__URL", db_url)
            .env("OUTBOX_RELAY__BROKER__AMQP__URL", amqp_url())
            .env("OUTBOX_RELAY__LOG__FORMAT", "text")
            .env("NO_COLOR", "1")
            .stdout(stdout)
            .stderr(stderr);
        if !options.default_timing {
            cmd.env("OUTBOX_RELAY__HA__LEASE_TTL", "1s")
                .env("OUTBOX_RELAY__METRICS__BACKLOG_INTERVAL", "200ms")
                .env("OUTBOX_RELAY__RELAY__POLL_INTERVAL", "20ms")
                .env("OUTBOX_RELAY__RETRY__INITIAL_BACKOFF", "50ms")
                .env("OUTBOX_RELAY__RETRY__MAX_BACKOFF", "500ms")
                .env("OUTBOX_RELAY__LOG__LEVEL", "info");
        }
        if let Some(broker) = options.broker {
            cmd.env("OUTBOX_RELAY__BROKER__KIND", broker.kind())
                .env(
                    "OUTBOX_RELAY__BROKER__KAFKA__BOOTSTRAP_SERVERS",
                    kafka::bootstrap(),
                )
                .env("OUTBOX_RELAY__BROKER__REDIS__URL", super::redis::url())
                .env(
                    "OUTBOX_RELAY__BROKER__NSQ__NSQD_TCP_ADDRESS",
                    super::nsq::address(),
                );
        }
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn outbox-relay");
        Self { child, log, http }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident set size so far, in MiB (VmHWM).
    pub fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM");
        kib / 1024.0
    }

    /// User plus system CPU time so far.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_of(std::path::Path::new(&format!("/proc/{}", self.pid())))
            .expect("the relay's /proc stat")
            .1
    }

    /// GET a path on the relay's HTTP listener: (status code, body), or None if unreachable.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.http, path).await
    }

    /// The value of an unlabelled (or fully labelled) sample from `/metrics`.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics").await?;
        body.lines()
            .find(|l| l.starts_with(sample) && l[sample.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal)
            .expect("send signal");
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log has `needle` on `n` lines, checks the process is still running (it
    /// retries rather than exits), and returns the first such line.
    pub async fn wait_logged_while_running(
        &mut self,
        needle: &str,
        n: usize,
        timeout: Duration,
    ) -> String {
        let deadline = Instant::now() + timeout;
        while self.logs().matches(needle).count() < n {
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {n} log lines with `{needle}`; the log:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "the relay must keep retrying:\n{}",
            self.logs()
        );
        let logs = self.logs();
        logs.lines()
            .find(|l| l.contains(needle))
            .unwrap()
            .to_string()
    }

    /// SIGTERM, then waits for the exit whatever its status, blocking the thread: for the
    /// bench, between measurements. Tests use [`Self::terminate`].
    pub fn stop_blocking(mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }

    /// SIGTERM, then a clean exit within `timeout`.
    pub async fn terminate(mut self, timeout: Duration) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let status = self.wait_exit(timeout).await;
        assert!(status.success(), "{status:?}");
    }

    /// Waits for the process to exit, polling so the test runtime is never blocked.
    pub async fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let child = &mut self.child;
        let log = self.log.clone();
        wait_for(
            &format!("relay to exit (log {})", log.display()),
            timeout,
            || {
                let status = child.try_wait().expect("try_wait");
                async move { status }
            },
        )
        .await
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 GET over loopback: (status, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    http_request(addr, "GET", path).await
}

/// A minimal HTTP/1.1 request without a body over loopback: (status, body).
pub async fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

impl RelayProcess {
    /// Whether this replica reports holding the lease.
    pub async fn is_leader(&self) -> bool {
        self.metric("outbox_relay_leader").await == Some(1.0)
    }
}

/// Waits (up to a minute) until exactly one of the replicas leads; returns its index.
pub async fn leader_of(replicas: &[&RelayProcess]) -> usize {
    wait_for("a leader", Duration::from_secs(60), || async {
        let mut leaders = Vec::new();
        for (i, r) in replicas.iter().enumerate() {
            if r.is_leader().await {
                leaders.push(i);
            }
        }
        (leaders.len() == 1).then(|| leaders[0])
    })
    .await
}

/// The binary run to its end with no configuration file and no relay variables of the test's
/// environment: only what `args` and `env` give it (admin commands, `check-config`).
pub fn run_binary(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_outbox-relay"));
    command
        .args(args)
        .env_remove("OUTBOX_RELAY_CONFIG")
        .env_remove("DATABASE_URL")
        .env("OUTBOX_RELAY__LOG__LEVEL", "warn");
    for (k, _) in std::env::vars() {
        if k.starts_with("OUTBOX_RELAY__") && k != "OUTBOX_RELAY__LOG__LEVEL" {
            command.env_remove(k);
        }
    }
    command.envs(env.iter().copied());
    command.output().expect("run outbox-relay")
}

/// The command name and CPU time so far (user plus system) of the process or thread whose
/// /proc directory is `dir`; None once it is gone.
pub fn cpu_of(dir: &std::path::Path) -> Option<(String, f64)> {
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    // The name is in parentheses and may itself hold spaces or parentheses; utime and stime
    // are the 12th and 13th fields after it (14 and 15 of the line).
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let fields: Vec<&str> = stat.get(close + 2..)?.split(' ').collect();
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // /proc reports in USER_HZ, which is 100 on every Linux architecture we run on.
    Some((stat[open + 1..close].to_string(), ticks / 100.0))
}
