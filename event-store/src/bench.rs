//! What the benchmarks share (feature `testing`): their section of
//! BENCHMARKS.md, and the facts every section states.

use sqlx::PgPool;

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
