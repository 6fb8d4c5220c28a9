//! The committed copy of an API's OpenAPI document (`docs/openapi/*.json`),
//! compared with what the code generates so that API changes show in review.

/// `Ok` when the file at `path` holds `document` as pretty JSON; with
/// `UPDATE_OPENAPI` set, rewrites the file first. The error says how to update it.
pub fn check_committed_copy(document: &utoipa::openapi::OpenApi, path: &str) -> Result<(), String> {
    let generated = document.to_pretty_json().map_err(|e| e.to_string())? + "\n";
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(path, &generated).map_err(|e| format!("cannot write {path}: {e}"))?;
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    if committed == generated {
        Ok(())
    } else {
        Err(format!(
            "{path} differs from the code's document: run `UPDATE_OPENAPI=1 cargo nextest run --workspace --all-features openapi` \
             and review the change"
        ))
    }
}
