//! `mint-token <sub> [--scope "<scopes>"] [--ttl <duration>] [--key-file <private.pem>]`:
//! prints a development bearer token that the APIs, configured from the same
//! environment (`JWT_ALGORITHM`, `JWT_SECRET` / `JWT_SECRET_FILE`,
//! `JWT_ISSUER`, `JWT_AUDIENCE`), accept. RS256 and ES256 need the private
//! key's PEM file. The default scope is a customer's: `orders:write orders:read`.
//! Refused under `APP_PROFILE=production`.

#![allow(clippy::print_stdout)] // the token is the output

use std::time::Duration;

use anyhow::{bail, Context};
use service_kit::auth::{self, Algorithm, Claims};
use service_kit::config::{self, Environment};

const USAGE: &str =
    "usage: mint-token <sub> [--scope \"orders:write orders:read\"] [--ttl 1h] [--key-file private.pem]";

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(sub) = args.next().filter(|s| !s.starts_with("--")) else { bail!("{USAGE}") };
    let (mut scope, mut ttl, mut key_file) = ("orders:write orders:read".to_owned(), Duration::from_secs(3600), None);
    while let Some(flag) = args.next() {
        let value = args.next().with_context(|| format!("{flag} needs a value; {USAGE}"))?;
        match flag.as_str() {
            "--scope" => scope = value,
            "--ttl" => ttl = humantime::parse_duration(&value).with_context(|| format!("--ttl {value:?}"))?,
            "--key-file" => key_file = Some(value),
            other => bail!("unknown option {other}; {USAGE}"),
        }
    }
    let env = &Environment;
    if config::parsed(env, "APP_PROFILE", "development".to_owned())? == "production" {
        bail!("mint-token makes development tokens; APP_PROFILE is production");
    }
    let algorithm = match config::parsed(env, "JWT_ALGORITHM", "HS256".to_owned())?.as_str() {
        "HS256" => Algorithm::HS256,
        "RS256" => Algorithm::RS256,
        "ES256" => Algorithm::ES256,
        other => bail!("JWT_ALGORITHM {other:?}: HS256, RS256 or ES256"),
    };
    let key = match (algorithm, key_file) {
        (Algorithm::HS256, _) => auth::secret(env, "JWT_SECRET")?
            .map_or_else(|| auth::DEVELOPMENT_SECRET.to_owned(), |secret| secret.expose().to_owned())
            .into_bytes(),
        (_, Some(path)) => std::fs::read(&path).with_context(|| format!("cannot read {path}"))?,
        (_, None) => bail!("{algorithm:?} tokens are signed with a private key: pass --key-file"),
    };
    let claims = Claims {
        sub,
        iss: config::parsed(env, "JWT_ISSUER", "order-system".to_owned())?,
        aud: config::parsed(env, "JWT_AUDIENCE", "order-system".to_owned())?,
        exp: auth::now() + ttl.as_secs(),
        nbf: None,
        scope,
    };
    println!("{}", auth::mint(algorithm, &key, &claims).context("cannot sign the token")?);
    Ok(())
}
