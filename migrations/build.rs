// `sqlx::migrate!` embeds this directory's .sql files at compile time: a new
// migration must rebuild the crate (sqlx does not track files it has not seen).
fn main() {
    println!("cargo:rerun-if-changed=.");
}
