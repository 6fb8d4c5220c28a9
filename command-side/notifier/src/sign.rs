//! Webhook signatures as the Standard Webhooks specification defines them:
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`,
//! keyed with the endpoint's secret (`whsec_<base64>`; the key is the bytes
//! after the prefix, decoded).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::hmac;

/// A secret that is not `whsec_<base64>`.
#[derive(Debug, thiserror::Error)]
#[error("the endpoint's secret is not whsec_<base64>")]
pub struct BadSecret;

/// The `webhook-signature` value of a message.
pub fn signature(secret: &str, message_id: &str, timestamp: i64, body: &str) -> Result<String, BadSecret> {
    let tag = hmac::sign(&key(secret)?, format!("{message_id}.{timestamp}.{body}").as_bytes());
    Ok(format!("v1,{}", STANDARD.encode(tag.as_ref())))
}

/// The HMAC key of a `whsec_<base64>` secret.
fn key(secret: &str) -> Result<hmac::Key, BadSecret> {
    let bytes = STANDARD.decode(secret.strip_prefix("whsec_").unwrap_or(secret)).map_err(|_| BadSecret)?;
    Ok(hmac::Key::new(hmac::HMAC_SHA256, &bytes))
}

/// Whether `header` (space-separated `v1,<sig>` entries) holds the signature
/// of the message: what a receiver checks (in constant time, by `ring`).
pub fn verify(secret: &str, message_id: &str, timestamp: i64, body: &str, header: &str) -> bool {
    let Ok(key) = key(secret) else { return false };
    let signed = format!("{message_id}.{timestamp}.{body}");
    header
        .split(' ')
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|sig| STANDARD.decode(sig).ok())
        .any(|tag| hmac::verify(&key, signed.as_bytes(), &tag).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the specification's reference libraries.
    #[test]
    fn signs_as_the_reference_implementation_does() {
        let (secret, id, timestamp, body) = (
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        );
        assert_eq!(signature(secret, id, timestamp, body).unwrap(), "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(verify(secret, id, timestamp, body, "v1,bm90IGl0 v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="));
        assert!(!verify(secret, id, timestamp + 1, body, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="));
        assert!(!verify(
            secret,
            id,
            timestamp,
            r#"{"test": 2432232315}"#,
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        ));
        assert!(signature("whsec_???", id, timestamp, body).is_err());
    }
}
