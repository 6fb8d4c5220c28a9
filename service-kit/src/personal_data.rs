//! Personal data, sealed with a key per customer (crypto-shredding, ADR 0014).
//!
//! Events carry personal data (a customer's e-mail address) only sealed:
//! AES-256-GCM under the customer's data key, with the key's id as
//! associated data, as `base64url(nonce || ciphertext || tag)` beside the
//! key id. The data keys live in `personal_data_keys`, apart from the log,
//! each sealed in turn with the master key from configuration
//! (`PERSONAL_DATA_KEY` or `PERSONAL_DATA_KEY_FILE`, never the repository).
//! Erasing a customer destroys their keys: everything sealed under them,
//! in the log, the read models, NATS and backups of those, reads as erased
//! from then on, and nothing else has to change.
//!
//! Nothing here caches a data key: a key erased is gone for every process at
//! once. The cipher is ring's (already in the tree through rustls).

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use sqlx::PgPool;
use uuid::Uuid;

use crate::config::{self, ConfigError, Source};

/// The master key of development machines; production refuses it.
const DEVELOPMENT_KEY: [u8; 32] = *b"development key: never in prod!!";

/// The key that seals the customers' data keys.
#[derive(Clone)]
pub struct MasterKey {
    key: [u8; 32],
    /// The first 8 hex digits of its SHA-256, recorded beside each key it
    /// seals, so that a rotation knows which master key sealed what.
    id: String,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey({})", self.id)
    }
}

impl MasterKey {
    pub fn new(key: [u8; 32]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, &key);
        let id = digest.as_ref()[..4].iter().map(|b| format!("{b:02x}")).collect();
        Self { key, id }
    }

    /// The development key (a warning-free default outside production).
    pub fn development() -> Self {
        Self::new(DEVELOPMENT_KEY)
    }

    /// `PERSONAL_DATA_KEY` (64 hex digits: 32 random bytes, e.g.
    /// `openssl rand -hex 32`) or the file `PERSONAL_DATA_KEY_FILE` names;
    /// unset: the development key, which `APP_PROFILE=production` refuses.
    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        let production = config::parsed(source, "APP_PROFILE", "development".to_owned())? == "production";
        let Some(secret) = crate::auth::secret(source, "PERSONAL_DATA_KEY")? else {
            if production {
                return Err(ConfigError::new(
                    "PERSONAL_DATA_KEY",
                    "",
                    "production needs PERSONAL_DATA_KEY or PERSONAL_DATA_KEY_FILE (64 hex digits)",
                ));
            }
            return Ok(Self::development());
        };
        let key = parse_key(secret.expose())
            .ok_or_else(|| ConfigError::new("PERSONAL_DATA_KEY", "***", "must be 64 hex digits (32 bytes)"))?;
        if production && key == DEVELOPMENT_KEY {
            return Err(ConfigError::new("PERSONAL_DATA_KEY", "***", "production may not use the development key"));
        }
        Ok(Self::new(key))
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

/// 64 hex digits as 32 bytes.
fn parse_key(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..32).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()).collect();
    bytes.and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
}

/// The master key that seals, and those that sealed before a rotation.
#[derive(Debug, Clone)]
pub struct MasterKeys {
    pub current: MasterKey,
    /// `PERSONAL_DATA_PREVIOUS_KEYS` (or `_FILE`): master keys rotated out,
    /// comma- or line-separated. Data keys they sealed still open, and are
    /// sealed again with the current key (see [`Vault::reseal_all`]).
    pub previous: Vec<MasterKey>,
}

impl MasterKeys {
    pub fn development() -> Self {
        Self { current: MasterKey::development(), previous: Vec::new() }
    }

    /// `PERSONAL_DATA_KEY`, `PERSONAL_DATA_PREVIOUS_KEYS` (see [`MasterKey::from_source`]).
    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        let current = MasterKey::from_source(source)?;
        let previous = match crate::auth::secret(source, "PERSONAL_DATA_PREVIOUS_KEYS")? {
            None => Vec::new(),
            Some(list) => list
                .expose()
                .split([',', '\n'])
                .filter(|key| !key.trim().is_empty())
                .map(|key| {
                    parse_key(key).map(MasterKey::new).ok_or_else(|| {
                        ConfigError::new("PERSONAL_DATA_PREVIOUS_KEYS", "***", "each key must be 64 hex digits")
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(Self { current, previous })
    }

    fn by_id(&self, id: Option<&str>) -> Option<&MasterKey> {
        std::iter::once(&self.current).chain(&self.previous).find(|key| Some(key.id()) == id)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("the key table: {0}")]
    Database(#[from] sqlx::Error),
    #[error("the customer's key was made meanwhile by another request and is not readable yet; try again")]
    Busy,
    #[error("a data key cannot be opened with the configured master key (sealed by master key {0:?})")]
    WrongMasterKey(String),
}

/// What a sealed value reads as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    Clear(String),
    /// Its key was destroyed (or never existed): the data is gone.
    Erased,
    /// Its key exists but the value does not open with it (tampered, or
    /// sealed elsewhere): logged, shown as unreadable, never as the data.
    Unreadable,
}

/// Seals, opens and erases customers' personal data.
#[derive(Clone)]
pub struct Vault {
    pool: PgPool,
    master: MasterKeys,
    random: SystemRandom,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault").field("master", &self.master).finish_non_exhaustive()
    }
}

impl Vault {
    pub fn new(pool: PgPool, master: MasterKeys) -> Self {
        Self { pool, master, random: SystemRandom::new() }
    }

    /// Seals `clear` under `customer_id`'s key (made on first use): the key's
    /// id and the sealed text.
    pub async fn seal(&self, customer_id: &str, clear: &str) -> Result<(Uuid, String), VaultError> {
        let (key_id, key) = self.live_key(customer_id).await?;
        Ok((key_id, self.encrypt(&key, key_id, clear.as_bytes())))
    }

    /// What `sealed` (under key `key_id`) reads as now.
    pub async fn open(&self, key_id: Uuid, sealed: &str) -> Result<Opened, VaultError> {
        let mut opened = self.open_all(&[(key_id, sealed)]).await?;
        Ok(opened.pop().expect("one answer per value"))
    }

    /// What each `(key_id, sealed)` reads as now, in order: one query for all.
    pub async fn open_all(&self, values: &[(Uuid, &str)]) -> Result<Vec<Opened>, VaultError> {
        let mut key_ids: Vec<Uuid> = values.iter().map(|(key_id, _)| *key_id).collect();
        key_ids.sort_unstable();
        key_ids.dedup();
        let rows: Vec<(Uuid, Option<Vec<u8>>, Option<String>)> =
            sqlx::query_as("SELECT key_id, wrapped_key, master_key_id FROM personal_data_keys WHERE key_id = ANY($1)")
                .bind(&key_ids)
                .fetch_all(&self.pool)
                .await?;
        let mut keys = std::collections::HashMap::new();
        for (key_id, wrapped, master_key_id) in rows {
            if let Some(wrapped) = wrapped {
                keys.insert(key_id, self.unwrap(key_id, &wrapped, master_key_id.as_deref())?);
            }
        }
        Ok(values
            .iter()
            .map(|(key_id, sealed)| {
                let Some(key) = keys.get(key_id) else { return Opened::Erased };
                match self.decrypt(key, *key_id, sealed).and_then(|clear| String::from_utf8(clear).ok()) {
                    Some(clear) => Opened::Clear(clear),
                    None => {
                        tracing::error!(%key_id, "a sealed value does not open with its key");
                        Opened::Unreadable
                    }
                }
            })
            .collect())
    }

    /// Destroys every key of `customer_id`: all their data sealed so far
    /// reads as erased. Answers how many keys were destroyed (0: none left).
    pub async fn erase(&self, customer_id: &str) -> Result<u64, VaultError> {
        let erased = sqlx::query(
            "UPDATE personal_data_keys SET wrapped_key = NULL, erased_at = now() \
             WHERE customer_id = $1 AND erased_at IS NULL",
        )
        .bind(customer_id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if erased > 0 {
            // The old row versions still hold the sealed key until a vacuum
            // removes them: do it now (a small table), rather than some day.
            if let Err(error) = sqlx::query("VACUUM personal_data_keys").execute(&self.pool).await {
                tracing::warn!(%error, "cannot vacuum personal_data_keys after an erasure: autovacuum will");
            }
        }
        Ok(erased)
    }

    /// The customer's live key, made if there is none.
    async fn live_key(&self, customer_id: &str) -> Result<(Uuid, [u8; 32]), VaultError> {
        for _ in 0..3 {
            let fresh_id = Uuid::new_v4();
            let mut fresh = [0u8; 32];
            self.random.fill(&mut fresh).expect("the system's random source works");
            let wrapped = self.encrypt(&self.master.current.key, fresh_id, &fresh);
            // Made here, or found: one statement, whoever comes first.
            let row: Option<(Uuid, Option<Vec<u8>>, Option<String>)> = sqlx::query_as(
                "WITH made AS ( \
                   INSERT INTO personal_data_keys (key_id, customer_id, wrapped_key, master_key_id) \
                   VALUES ($1, $2, $3, $4) ON CONFLICT (customer_id) WHERE erased_at IS NULL DO NOTHING \
                   RETURNING key_id, wrapped_key, master_key_id) \
                 SELECT key_id, wrapped_key, master_key_id FROM made \
                 UNION ALL \
                 SELECT key_id, wrapped_key, master_key_id FROM personal_data_keys \
                 WHERE customer_id = $2 AND erased_at IS NULL \
                 LIMIT 1",
            )
            .bind(fresh_id)
            .bind(customer_id)
            .bind(URL_SAFE_NO_PAD.decode(&wrapped).expect("our own encoding").as_slice())
            .bind(self.master.current.id())
            .fetch_optional(&self.pool)
            .await?;
            // None: another request made it after this statement's snapshot.
            if let Some((key_id, Some(wrapped), master_key_id)) = row {
                return Ok((key_id, self.unwrap(key_id, &wrapped, master_key_id.as_deref())?));
            }
        }
        Err(VaultError::Busy)
    }

    /// The data key `key_id`, opened with the master key that sealed it.
    fn unwrap(&self, key_id: Uuid, wrapped: &[u8], master_key_id: Option<&str>) -> Result<[u8; 32], VaultError> {
        let wrong = || VaultError::WrongMasterKey(master_key_id.unwrap_or_default().to_owned());
        // Keys sealed before `master_key_id` was recorded are the current key's.
        let master = self.master.by_id(master_key_id.or(Some(self.master.current.id()))).ok_or_else(wrong)?;
        let clear = self.decrypt(&master.key, key_id, &URL_SAFE_NO_PAD.encode(wrapped)).ok_or_else(wrong)?;
        <[u8; 32]>::try_from(clear.as_slice()).map_err(|_| wrong())
    }

    /// Seals every live data key that a previous master key sealed with the
    /// current one, `batch` at a time; answers how many. Run after a
    /// rotation (the command API does at start); once it answers 0 the
    /// previous keys may leave the configuration.
    pub async fn reseal_all(&self, batch: i64) -> Result<u64, VaultError> {
        let mut resealed = 0;
        loop {
            let rows: Vec<(Uuid, Vec<u8>, Option<String>)> = sqlx::query_as(
                "SELECT key_id, wrapped_key, master_key_id FROM personal_data_keys \
                 WHERE wrapped_key IS NOT NULL AND master_key_id IS DISTINCT FROM $1 LIMIT $2",
            )
            .bind(self.master.current.id())
            .bind(batch)
            .fetch_all(&self.pool)
            .await?;
            if rows.is_empty() {
                return Ok(resealed);
            }
            for (key_id, wrapped, master_key_id) in rows {
                let key = self.unwrap(key_id, &wrapped, master_key_id.as_deref())?;
                let sealed = URL_SAFE_NO_PAD
                    .decode(self.encrypt(&self.master.current.key, key_id, &key))
                    .expect("our own encoding");
                // Unless erased meanwhile.
                resealed += sqlx::query(
                    "UPDATE personal_data_keys SET wrapped_key = $2, master_key_id = $3 \
                     WHERE key_id = $1 AND wrapped_key IS NOT NULL",
                )
                .bind(key_id)
                .bind(sealed)
                .bind(self.master.current.id())
                .execute(&self.pool)
                .await?
                .rows_affected();
            }
        }
    }

    /// `base64url(nonce || ciphertext || tag)` of `clear` under `key`, bound to `key_id`.
    fn encrypt(&self, key: &[u8; 32], key_id: Uuid, clear: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).expect("the system's random source works");
        let cipher = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte key"));
        let mut sealed = clear.to_vec();
        cipher
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(key_id.as_bytes()), &mut sealed)
            .expect("sealing a short value cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        URL_SAFE_NO_PAD.encode(out)
    }

    fn decrypt(&self, key: &[u8; 32], key_id: Uuid, sealed: &str) -> Option<Vec<u8>> {
        let bytes = URL_SAFE_NO_PAD.decode(sealed).ok()?;
        if bytes.len() < NONCE_LEN {
            return None;
        }
        let (nonce, body) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let cipher = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).ok()?);
        let mut body = body.to_vec();
        let clear = cipher.open_in_place(nonce, Aad::from(key_id.as_bytes()), &mut body).ok()?;
        Some(clear.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Vars;

    #[test]
    fn the_master_key_comes_from_configuration_and_production_needs_one() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let not_hex = hex.replace('0', "x");
        let key = MasterKey::from_source(&Vars(&[("PERSONAL_DATA_KEY", hex)])).unwrap();
        assert_eq!(key.key[1], 0x11);
        assert_eq!(key.id().len(), 8);
        assert_eq!(MasterKey::from_source(&Vars(&[])).unwrap().key, DEVELOPMENT_KEY);
        for (vars, why) in [
            (&[("APP_PROFILE", "production")][..], "production needs"),
            (&[("PERSONAL_DATA_KEY", "abc")][..], "64 hex digits"),
            (&[("PERSONAL_DATA_KEY", not_hex.as_str())][..], "64 hex digits"),
        ] {
            let error = MasterKey::from_source(&Vars(vars)).unwrap_err();
            assert!(error.name == "PERSONAL_DATA_KEY" && error.reason.contains(why), "{error}");
            assert!(!error.to_string().contains("112233"), "the key is never echoed: {error}");
        }
    }

    #[test]
    fn previous_master_keys_come_from_configuration_too() {
        let (a, b) = ("11".repeat(32), "22".repeat(32));
        let list = format!("{a},\n{b}\n");
        let keys = MasterKeys::from_source(&Vars(&[("PERSONAL_DATA_PREVIOUS_KEYS", &list)])).unwrap();
        assert_eq!(keys.previous.len(), 2);
        assert_eq!(keys.by_id(Some(keys.previous[1].id())).unwrap().key, [0x22; 32]);
        assert_eq!(keys.by_id(Some("nope")).map(MasterKey::id), None);
        let error = MasterKeys::from_source(&Vars(&[("PERSONAL_DATA_PREVIOUS_KEYS", "abc")])).unwrap_err();
        assert_eq!(error.name, "PERSONAL_DATA_PREVIOUS_KEYS");
    }

    #[tokio::test]
    async fn a_sealed_value_opens_only_with_its_key_and_its_key_id() {
        let pool = sqlx::postgres::PgPoolOptions::new().connect_lazy("postgres://nowhere/none").unwrap();
        let vault = Vault::new(pool, MasterKeys::development());
        let (key, key_id) = ([7u8; 32], Uuid::new_v4());
        let sealed = vault.encrypt(&key, key_id, b"ada@example.com");
        assert!(!sealed.contains("ada"), "{sealed}");
        assert_ne!(sealed, vault.encrypt(&key, key_id, b"ada@example.com"), "a fresh nonce each time");
        assert_eq!(vault.decrypt(&key, key_id, &sealed).unwrap(), b"ada@example.com");
        assert_eq!(vault.decrypt(&[8u8; 32], key_id, &sealed), None, "another key");
        assert_eq!(vault.decrypt(&key, Uuid::new_v4(), &sealed), None, "another key id");
        let mut tampered = URL_SAFE_NO_PAD.decode(&sealed).unwrap();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(vault.decrypt(&key, key_id, &URL_SAFE_NO_PAD.encode(tampered)), None, "tampered");
        assert_eq!(vault.decrypt(&key, key_id, "not base64!"), None);
    }
}
