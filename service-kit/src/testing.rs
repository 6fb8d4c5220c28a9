//! Test support (feature `testing`): a NATS server of the test's own (on a
//! free port with its own JetStream directory, so a test can stop and
//! restart it without disturbing others), and bearer tokens.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct NatsServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts `nats-server -js` (`NATS_SERVER_BIN`, `/usr/sbin/nats-server` or
    /// from PATH) on a free port.
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = std::env::temp_dir().join(format!("nats-test-{}", uuid::Uuid::new_v4().simple()));
        let mut server = Self { port, dir, child: None };
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
