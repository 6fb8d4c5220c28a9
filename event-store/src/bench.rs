//! What the benchmarks share (feature `testing`): their section of
//! BENCHMARKS.md, and the facts every section states.

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, PgConnection, PgPool};

/// `BENCH_QUICK=1`: a short run that leaves BENCHMARKS.md alone.
pub fn quick() -> bool {
    std::env::var_os("BENCH_QUICK").is_some_and(|v| v != "0")
}

/// The server and the machine, in one line.
pub async fn server_facts(pool: &PgPool) -> String {
    let version: String = sqlx::query_scalar("SHOW server_version").fetch_one(pool).await.unwrap_or_default();
    let sync: String = sqlx::query_scalar("SHOW synchronous_commit").fetch_one(pool).await.unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("PostgreSQL {version} (synchronous_commit={sync}) on the same machine, {cores} cores")
}

/// The commit measured, marked when the work tree has changes; and today's date.
pub fn commit_and_date() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .unwrap_or_default()
    };
    // Changes to BENCHMARKS.md itself (an earlier benchmark of the same run) do not count.
    let dirty =
        if git(&["status", "--porcelain", "--untracked-files=no", "--", ".", ":!BENCHMARKS.md"]).trim().is_empty() {
            ""
        } else {
            " (with uncommitted changes)"
        };
    format!(
        "commit {}{dirty} — {}",
        git(&["rev-parse", "--short", "HEAD"]).trim(),
        chrono::Utc::now().format("%Y-%m-%d")
    )
}

/// Replaces the section between `<!-- bench:<key>:start -->` and
/// `<!-- bench:<key>:end -->` in BENCHMARKS.md at the workspace root (or
/// appends it).
pub fn write_section(key: &str, section: &str) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../BENCHMARKS.md");
    let (start, end) = (format!("<!-- bench:{key}:start -->"), format!("<!-- bench:{key}:end -->"));
    let block = format!("{start}\n{}\n{end}", section.trim_end());
    let current = std::fs::read_to_string(path)
        .unwrap_or_else(|_| "# Benchmarks\n\nEach section is written by the command it names.\n".to_string());
    let updated = match (current.find(&start), current.find(&end)) {
        (Some(a), Some(b)) if a < b => format!("{}{block}{}", &current[..a], &current[b + end.len()..]),
        _ => format!("{}\n\n{block}\n", current.trim_end()),
    };
    std::fs::write(path, updated).expect("write BENCHMARKS.md");
}

/// A database of the benchmark's own on the server `DATABASE_URL` names,
/// created empty; [`Scratch::drop_database`] removes it.
pub struct Scratch {
    pub pool: PgPool,
    /// Its URL, for processes the benchmark starts.
    pub url: String,
    name: String,
    admin: PgConnection,
}

impl Scratch {
    /// Creates `<prefix>_<random>` and opens a pool of `max_connections` on it.
    pub async fn create(prefix: &str, max_connections: u32) -> Self {
        let server_url = std::env::var("DATABASE_URL").expect("DATABASE_URL must name the PostgreSQL server");
        let server: PgConnectOptions = server_url.parse().expect("DATABASE_URL");
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        let mut admin = server.connect().await.expect("connect");
        sqlx::query(&format!("CREATE DATABASE \"{name}\"")).execute(&mut admin).await.expect("create database");
        // The services' pool settings: what runs in the benchmark is what runs in production.
        let pool = crate::postgres::pool_options()
            .max_connections(max_connections)
            .connect_with(server.database(&name))
            .await
            .expect("connect");
        let url = format!("{}/{name}", server_url.rsplit_once('/').expect("DATABASE_URL names a database").0);
        Self { pool, url, name, admin }
    }

    pub async fn drop_database(mut self) {
        self.pool.close().await;
        let drop = format!("DROP DATABASE \"{}\" WITH (FORCE)", self.name);
        sqlx::query(&drop).execute(&mut self.admin).await.expect("drop database");
    }
}
