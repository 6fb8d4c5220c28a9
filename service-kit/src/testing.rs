//! Test support (feature `testing`): a NATS server of the test's own (on a
//! port held for it, with its own JetStream directory, so a test can stop and
//! restart it without disturbing others), and bearer tokens.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use event_store::testing::Ports;

pub struct NatsServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// Holds `port` for the server's life, across restarts.
    _port: Ports,
}

impl NatsServer {
    /// Starts `nats-server -js` (`NATS_SERVER_BIN`, `/usr/sbin/nats-server` or
    /// from PATH) on a port held for it (`event_store::testing::Ports`).
    pub fn start() -> Self {
        let mut held = Ports::default();
        let port = held.port();
        let dir = std::env::temp_dir().join(format!("nats-test-{}", uuid::Uuid::new_v4().simple()));
        let mut server = Self { port, dir, child: None, _port: held };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server again on the same port and directory (it must be stopped).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the server is running");
        let binary = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| {
            // Debian installs it in /usr/sbin, which not every PATH holds.
            let sbin = "/usr/sbin/nats-server";
            if std::path::Path::new(sbin).exists() {
                sbin.into()
            } else {
                "nats-server".into()
            }
        });
        let child = Command::new(&binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary} (install nats-server, see README): {e}"));
        self.child = Some(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(10), "nats-server did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Stops the server the way an operator would (SIGTERM), and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let started = Instant::now();
            while child.try_wait().ok().flatten().is_none() {
                if started.elapsed() > Duration::from_secs(10) {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Deletes the streams that test runs killed before their clean-up left on
/// the shared NATS server: named `<prefix>_..._<hex id>` with one of
/// `prefixes`, and created longer ago than the test databases' limit
/// (`event_store::testing::STALE_AFTER`, three hours). Each holds a
/// reservation of the server's JetStream storage (its `max_bytes`), so
/// enough of them would refuse every new test's stream. Best effort: a
/// server that does not answer within seconds is left as it is.
#[cfg(feature = "nats")]
pub async fn drop_stale_streams(js: &async_nats::jetstream::Context, prefixes: &[&str]) {
    drop_streams_older_than(js, prefixes, event_store::testing::STALE_AFTER).await;
}

/// [`drop_stale_streams`], for streams created more than `age` ago.
#[cfg(feature = "nats")]
pub async fn drop_streams_older_than(js: &async_nats::jetstream::Context, prefixes: &[&str], age: Duration) {
    use futures_util::TryStreamExt;
    let listed = tokio::time::timeout(Duration::from_secs(5), js.streams().try_collect::<Vec<_>>()).await;
    let Ok(Ok(streams)) = listed else { return };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    for info in streams {
        let name = &info.config.name;
        let created = u64::try_from(info.created.unix_timestamp()).unwrap_or(u64::MAX);
        if is_test_stream(name, prefixes) && now.saturating_sub(created) >= age.as_secs() {
            let _ = tokio::time::timeout(Duration::from_secs(2), js.delete_stream(name)).await;
        }
    }
}

/// `<prefix>_<hex id>` or `<prefix>_<name>_<hex id>`, the id at least 12 hex digits.
#[cfg(feature = "nats")]
fn is_test_stream(name: &str, prefixes: &[&str]) -> bool {
    let (Some((prefix, _)), Some((_, id))) = (name.split_once('_'), name.rsplit_once('_')) else { return false };
    prefixes.contains(&prefix) && id.len() >= 12 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A bearer token signed with `secret` (HS256) for `sub` with `scope`,
/// valid for ten minutes, as the services expect them (issuer and
/// audience `order-system`).
pub fn token(secret: &str, sub: &str, scope: &str) -> String {
    token_expiring(secret, sub, scope, crate::auth::now() + 600)
}

/// [`token`], expiring at `exp` (Unix seconds).
pub fn token_expiring(secret: &str, sub: &str, scope: &str, exp: u64) -> String {
    let claims = crate::auth::Claims {
        sub: sub.into(),
        iss: "order-system".into(),
        aud: "order-system".into(),
        exp,
        nbf: None,
        scope: scope.into(),
    };
    crate::auth::mint(crate::auth::Algorithm::HS256, secret.as_bytes(), &claims).expect("HS256 signs")
}

/// A test's settings: `defaults`, each overridden (or added) by `overrides`.
pub fn settings<'a>(defaults: &[(&'a str, &'a str)], overrides: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut settings: Vec<_> =
        defaults.iter().filter(|(name, _)| !overrides.iter().any(|(n, _)| n == name)).copied().collect();
    settings.extend_from_slice(overrides);
    settings
}

/// A small SMTP server for tests: it takes every message (or refuses the
/// recipients it is told to) and keeps them for the test to read.
pub mod smtp {
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::{TcpListener, TcpStream};

    /// A message as the sink received it.
    #[derive(Debug, Clone)]
    pub struct Received {
        pub mail_from: String,
        pub rcpt_to: Vec<String>,
        /// The message: headers, a blank line, the body (dot-stuffing undone).
        pub data: String,
    }

    impl Received {
        /// The value of header `name` (case-insensitive; folded lines joined).
        pub fn header(&self, name: &str) -> Option<String> {
            let head = self.data.split("\r\n\r\n").next().unwrap_or_default().replace("\r\n ", " ");
            head.lines().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.eq_ignore_ascii_case(name).then(|| value.trim().to_owned())
            })
        }

        /// The body after the headers, with quoted-printable soft breaks undone.
        pub fn body(&self) -> String {
            let body = self.data.split_once("\r\n\r\n").map_or("", |(_, body)| body);
            body.replace("=\r\n", "").replace("=3D", "=").replace("\r\n", "\n")
        }
    }

    #[derive(Default)]
    struct State {
        received: Vec<Received>,
        /// Recipients answered `550` (refused for good).
        refused: Vec<String>,
        /// How many `RCPT TO` to answer `451` (try again later) first.
        busy: usize,
    }

    #[derive(Clone)]
    pub struct SmtpSink {
        pub port: u16,
        state: Arc<Mutex<State>>,
    }

    impl SmtpSink {
        /// Listens on a free port of 127.0.0.1 until the runtime ends.
        pub async fn start() -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
            let port = listener.local_addr().expect("bound").port();
            let sink = Self { port, state: Arc::default() };
            let serving = sink.clone();
            tokio::spawn(async move {
                while let Ok((socket, _)) = listener.accept().await {
                    let sink = serving.clone();
                    tokio::spawn(async move {
                        let _ = sink.session(socket).await;
                    });
                }
            });
            sink
        }

        /// `smtp://127.0.0.1:<port>` (no TLS).
        pub fn url(&self) -> String {
            format!("smtp://127.0.0.1:{}", self.port)
        }

        pub fn received(&self) -> Vec<Received> {
            self.state.lock().unwrap().received.clone()
        }

        /// Refuses `address` with 550 from now on.
        pub fn refuse(&self, address: &str) {
            self.state.lock().unwrap().refused.push(address.to_owned());
        }

        /// Answers the next `times` recipients with 451 (a transient failure).
        pub fn busy(&self, times: usize) {
            self.state.lock().unwrap().busy = times;
        }

        async fn session(&self, socket: TcpStream) -> std::io::Result<()> {
            let (read, mut write) = socket.into_split();
            let mut lines = BufReader::new(read);
            write.write_all(b"220 sink ESMTP test\r\n").await?;
            let mut current: Option<Received> = None;
            let mut line = String::new();
            loop {
                line.clear();
                if lines.read_line(&mut line).await? == 0 {
                    return Ok(());
                }
                let command = line.trim_end().to_owned();
                let verb = command.split([' ', ':']).next().unwrap_or_default().to_ascii_uppercase();
                let answer: String = match verb.as_str() {
                    "EHLO" => "250-sink\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n".into(),
                    "HELO" | "NOOP" => "250 OK\r\n".into(),
                    "RSET" => {
                        current = None;
                        "250 OK\r\n".into()
                    }
                    "MAIL" => {
                        let from = address(&command);
                        current = Some(Received { mail_from: from, rcpt_to: Vec::new(), data: String::new() });
                        "250 OK\r\n".into()
                    }
                    "RCPT" => {
                        let to = address(&command);
                        let mut state = self.state.lock().unwrap();
                        if state.refused.contains(&to) {
                            "550 no such mailbox\r\n".into()
                        } else if state.busy > 0 {
                            state.busy -= 1;
                            "451 try again later\r\n".into()
                        } else {
                            if let Some(message) = current.as_mut() {
                                message.rcpt_to.push(to);
                            }
                            "250 OK\r\n".into()
                        }
                    }
                    "DATA" => {
                        write.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
                        let mut data = String::new();
                        loop {
                            line.clear();
                            if lines.read_line(&mut line).await? == 0 {
                                return Ok(());
                            }
                            if line == ".\r\n" || line == ".\n" {
                                break;
                            }
                            data.push_str(line.strip_prefix('.').unwrap_or(&line));
                        }
                        if let Some(mut message) = current.take() {
                            message.data = data;
                            self.state.lock().unwrap().received.push(message);
                        }
                        "250 queued\r\n".into()
                    }
                    "QUIT" => {
                        write.write_all(b"221 bye\r\n").await?;
                        return Ok(());
                    }
                    _ => "502 not implemented\r\n".into(),
                };
                write.write_all(answer.as_bytes()).await?;
            }
        }
    }

    /// `MAIL FROM:<a@b> SIZE=1` -> `a@b`.
    fn address(command: &str) -> String {
        command
            .split_once('<')
            .and_then(|(_, rest)| rest.split_once('>'))
            .map(|(a, _)| a.to_owned())
            .unwrap_or_default()
    }
}

#[cfg(all(test, feature = "nats"))]
mod tests {
    use super::*;

    #[test]
    fn test_streams_are_told_by_their_prefix_and_hex_id() {
        let prefixes = ["SAGATEST", "BENCH"];
        assert!(is_test_stream("SAGATEST_0123456789abcdef0123456789abcdef", &prefixes));
        assert!(is_test_stream("BENCH_relay_0123456789ab", &prefixes));
        for other in [
            "EVENTS",
            "SAGATEST",
            "SAGATEST_orders",
            "SAGATEST_0123",
            "EVENTS_0123456789abcdef",
            "SAGATEST-0123456789ab",
        ] {
            assert!(!is_test_stream(other, &prefixes), "{other}");
        }
    }

    /// On a server of its own: only the streams of the given prefixes with
    /// test ids go, and none younger than the age given.
    #[tokio::test]
    async fn only_old_enough_test_streams_are_dropped() {
        let server = NatsServer::start();
        let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
        let names = ["T_0123456789abcdef", "T_kept", "U_0123456789abcdef", "T_bench_fedcba9876543210"];
        for name in names {
            js.create_stream(async_nats::jetstream::stream::Config { name: name.into(), ..Default::default() })
                .await
                .unwrap();
        }
        let left = || async {
            use futures_util::TryStreamExt;
            let mut names: Vec<String> = js.stream_names().try_collect().await.unwrap();
            names.sort();
            names
        };
        drop_streams_older_than(&js, &["T"], Duration::from_secs(3600)).await;
        assert_eq!(left().await.len(), 4, "none is an hour old");
        drop_streams_older_than(&js, &["T"], Duration::ZERO).await;
        assert_eq!(left().await, ["T_kept", "U_0123456789abcdef"]);
    }
}
