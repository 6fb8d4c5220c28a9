//! Where the workspace's binaries are: built beside this test binary by the
//! workspace's test run (`cargo nextest run --workspace`, which builds the
//! binaries of every package with integration tests), or in
//! `SYSTEM_TESTS_BIN_DIR`.

use std::path::PathBuf;

/// The directory of the built binaries (`target/<profile>`).
pub fn dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SYSTEM_TESTS_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // This test binary is target/<profile>/deps/<name>-<hash>.
    let exe = std::env::current_exe().expect("the test binary knows its path");
    exe.parent().and_then(|deps| deps.parent()).expect("a test binary lives in target/<profile>/deps").to_owned()
}

/// The path of binary `name`, which must be built.
pub fn path(name: &str) -> PathBuf {
    let path = dir().join(name);
    assert!(
        path.exists(),
        "{} is not built: run the workspace's tests (cargo nextest run --workspace --all-features), \
         which build every service's binary",
        path.display()
    );
    path
}
