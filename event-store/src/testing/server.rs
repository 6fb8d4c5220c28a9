//! A PostgreSQL server of the test's own: a new cluster (`initdb`) in a
//! temporary directory, on a free port, that a test may stop, crash and
//! start again without disturbing the machine's server or other tests.
//! Removed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::Ports;

/// The server binaries: `PG_BIN_DIR`, or the newest of Debian's
/// `/usr/lib/postgresql/<version>/bin`, or `pg_ctl` from `PATH`.
fn bin_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("PG_BIN_DIR") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("pg_ctl").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// How the server stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Ends every session and shuts down cleanly.
    Fast,
    /// A crash: every process ends at once; the next start recovers from the WAL.
    Immediate,
}

pub struct PgServer {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    /// The user the server runs as: `postgres` when the tests run as root
    /// (PostgreSQL refuses to run as root).
    run_as: Option<String>,
    running: bool,
    /// Holds `port` for the server's life, across restarts.
    _port: Ports,
}

impl PgServer {
    /// Creates a cluster (trust authentication, user `postgres`) and starts it.
    pub fn start() -> Self {
        let bin = bin_dir().expect("PostgreSQL's server binaries (initdb, pg_ctl) are not installed; set PG_BIN_DIR");
        let mut server = Self::unstarted(bin, is_root().then(|| "postgres".to_owned()));
        let data = server.data_dir();
        server
            .run("initdb", &["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync", "-D", data.to_str().unwrap()]);
        // Fast and disposable: the operating system never crashes under a test.
        server.configure(
            "listen_addresses = '127.0.0.1'\nfsync = off\nfull_page_writes = off\nmax_connections = 200\n\
             logging_collector = off\nmax_prepared_transactions = 10\n",
        );
        server.restart();
        server
    }

    /// A hot standby of `primary` (a base backup streaming from it), started.
    pub fn standby_of(primary: &PgServer) -> Self {
        let mut standby = Self::unstarted(primary.bin.clone(), primary.run_as.clone());
        let (data, source) = (standby.data_dir(), primary.port.to_string());
        let data = data.to_str().unwrap();
        let backup =
            ["-h", "127.0.0.1", "-p", &source, "-U", "postgres", "-D", data, "-R", "-X", "stream", "-c", "fast"];
        standby.run("pg_basebackup", &backup);
        standby.configure("hot_standby = on\n");
        standby.restart();
        standby
    }

    /// A free port and an empty directory of its own (owned by `run_as`); nothing started.
    fn unstarted(bin: PathBuf, run_as: Option<String>) -> Self {
        let mut held = Ports::default();
        let port = held.port();
        let dir = std::env::temp_dir().join(format!("pg-test-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        if let Some(user) = &run_as {
            let chowned = Command::new("chown").arg(user).arg(&dir).status().unwrap();
            assert!(chowned.success(), "cannot give {} to {user}", dir.display());
        }
        Self { port, dir, bin, run_as, running: false, _port: held }
    }

    /// Appends this server's port and socket directory, and `settings`, to its `postgresql.conf`.
    fn configure(&self, settings: &str) {
        let settings =
            format!("\nport = {}\nunix_socket_directories = '{}'\n{settings}", self.port, self.dir.display());
        std::fs::OpenOptions::new()
            .append(true)
            .open(self.data_dir().join("postgresql.conf"))
            .and_then(|mut file| std::io::Write::write_all(&mut file, settings.as_bytes()))
            .unwrap();
    }

    /// `postgres://postgres@127.0.0.1:<port>/<database>`
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The postmaster's process id while the server runs (its backends are its children).
    pub fn postmaster_pid(&self) -> Option<u32> {
        let pid_file = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        pid_file.lines().next()?.trim().parse().ok()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Starts the server (it must be stopped) and waits until it takes connections.
    pub fn restart(&mut self) {
        assert!(!self.running, "the server is running");
        let (data, log) = (self.data_dir(), self.log_file());
        self.run("pg_ctl", &["-D", data.to_str().unwrap(), "-l", log.to_str().unwrap(), "-w", "-t", "60", "start"]);
        self.running = true;
    }

    pub fn stop(&mut self, how: Stop) {
        if !self.running {
            return;
        }
        let mode = match how {
            Stop::Fast => "fast",
            Stop::Immediate => "immediate",
        };
        let data = self.data_dir();
        self.run("pg_ctl", &["-D", data.to_str().unwrap(), "-m", mode, "-w", "-t", "60", "stop"]);
        self.running = false;
    }

    /// `program` of the server's binaries, run as the server's user.
    fn command(&self, program: &str) -> Command {
        let binary = self.bin.join(program);
        let mut command = match &self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(&binary);
                command
            }
            None => Command::new(&binary),
        };
        command.current_dir(&self.dir).stdin(Stdio::null());
        command
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        let output = self.command(program).args(args).output().unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        assert!(
            output.status.success(),
            "{program} {args:?} failed: {}{}\n(server log: {})",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_to_string(self.log_file()).unwrap_or_default()
        );
        output
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.running {
            let data = self.data_dir();
            let _ = self
                .command("pg_ctl")
                .args(["-D", data.to_str().unwrap(), "-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
