//! The APIs' OpenAPI documents say what the APIs do: Schemathesis (every
//! check, 60 examples per operation, stateful links) against both running
//! APIs of the whole shop, with no failure allowed beyond the answers
//! `schemathesis.toml` names and justifies (state-dependent 409/412/422 of
//! commands, the documented 503 of an unreachable `min_position`).
//! Schemathesis is `SCHEMATHESIS` or `/opt/schemathesis/bin/st` (where
//! `.ci/run` installs it) or `st` on the PATH.

use std::path::{Path, PathBuf};
use std::process::Command;

use system_tests::system::{Settings, System};

/// Schemathesis's random seed (`SCHEMATHESIS_SEED` overrides it).
const SEED: &str = "20261203";

fn schemathesis() -> PathBuf {
    if let Some(path) = std::env::var_os("SCHEMATHESIS") {
        return path.into();
    }
    let installed = Path::new("/opt/schemathesis/bin/st");
    if installed.exists() {
        return installed.to_owned();
    }
    "st".into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_the_documents_do_not_say() {
    let system = System::start(Settings::default()).await;
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemathesis.toml");
    let mut failures = Vec::new();
    for api in [&system.client.api, &system.client.query] {
        let (binary, token) = (schemathesis(), system.client.token.clone());
        let (config, document) = (config.clone(), format!("{api}/openapi.json"));
        let seed = std::env::var("SCHEMATHESIS_SEED").unwrap_or_else(|_| SEED.to_owned());
        let output = tokio::task::spawn_blocking(move || {
            Command::new(&binary)
                .arg("--config-file")
                .arg(&config)
                // A fixed seed: the same cases every run (change it to explore others).
                .args(["run", &document, "--max-examples", "60", "--seed", &seed, "--no-color", "--header"])
                .arg(format!("Authorization: Bearer {token}"))
                .output()
                .unwrap_or_else(|e| {
                    panic!("{} must be installed (pip install schemathesis; .ci/run does): {e}", binary.display())
                })
        })
        .await
        .unwrap();
        let report = String::from_utf8_lossy(&output.stdout).into_owned();
        let summary =
            report.lines().rev().find(|l| l.contains("passed") || l.contains("fail")).unwrap_or("").to_owned();
        eprintln!("{api}: {summary}");
        if !output.status.success() {
            failures.push(format!("{api}:\n{report}\n{}", String::from_utf8_lossy(&output.stderr)));
        }
    }
    system.stop(!failures.is_empty());
    assert!(failures.is_empty(), "Schemathesis found failures:\n{}", failures.join("\n"));
}
