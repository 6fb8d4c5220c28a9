//! Sending one delivery: a signed webhook over HTTP (`reqwest`), or an
//! e-mail over SMTP (`lettre`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use application::webhooks::{message_id, UrlPolicy};
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::outbox::Due;
use crate::sign;

/// What an attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// Taken (a 2xx answer; the SMTP server accepted the mail).
    Taken { status_code: Option<u16> },
    /// Not taken. `permanent`: trying again cannot help (an address the
    /// policy forbids, a mailbox the server refuses for good).
    Failed { status_code: Option<u16>, error: String, permanent: bool },
}

impl Sent {
    fn permanent(error: impl Into<String>) -> Self {
        Self::Failed { status_code: None, error: error.into(), permanent: true }
    }
}

/// Posts webhooks: signed, with a timeout, never following redirects nor
/// going through a proxy, and connecting only to addresses the policy
/// allows (checked after DNS, so a name cannot be pointed inside the network
/// later).
#[derive(Clone)]
pub struct WebhookSender {
    http: reqwest::Client,
    policy: UrlPolicy,
}

impl WebhookSender {
    pub fn new(policy: UrlPolicy, timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            // A proxy from the environment would connect wherever it is asked, past the policy.
            .no_proxy()
            .dns_resolver(Arc::new(Guarded { policy: policy.clone() }))
            .user_agent(concat!("order-system-notifier/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("an HTTP client with rustls builds");
        Self { http, policy }
    }

    pub async fn send(&self, due: &Due) -> Sent {
        let (Some(url), Some(secret)) = (&due.url, &due.secret) else {
            return Sent::permanent("the endpoint no longer exists");
        };
        // The URL was allowed when registered; the policy may have changed since.
        let url = match self.policy.check(url) {
            Ok(url) => url,
            Err(reason) => return Sent::permanent(format!("refused by the URL policy: {reason}")),
        };
        let id = message_id(due.delivery_id);
        let timestamp = chrono::Utc::now().timestamp();
        let signature = match sign::signature(secret, &id, timestamp, &due.body) {
            Ok(signature) => signature,
            Err(error) => return Sent::permanent(error.to_string()),
        };
        let request = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .header("correlation-id", &due.correlation_id)
            .body(due.body.clone());
        match request.send().await {
            Ok(answer) if answer.status().is_success() => Sent::Taken { status_code: Some(answer.status().as_u16()) },
            Ok(answer) => {
                let status = answer.status();
                let location =
                    answer.headers().get(reqwest::header::LOCATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
                let mut error = format!("answered {status}");
                if let Some(location) = location.filter(|_| status.is_redirection()) {
                    error.push_str(&format!(" (redirects are not followed: {location})"));
                }
                Sent::Failed { status_code: Some(status.as_u16()), error, permanent: false }
            }
            Err(error) => {
                let refused = std::error::Error::source(&error)
                    .map(|s| s.to_string())
                    .is_some_and(|s| s.contains(REFUSED_ADDRESS));
                let kind = if error.is_timeout() {
                    "timed out"
                } else if error.is_connect() {
                    "could not connect"
                } else {
                    "failed"
                };
                Sent::Failed { status_code: None, error: format!("{kind}: {}", chain(&error)), permanent: refused }
            }
        }
    }
}

const REFUSED_ADDRESS: &str = "resolves only to addresses WEBHOOK_ALLOW_PRIVATE forbids";

/// The error and its causes, on one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// DNS that drops the addresses the policy forbids.
struct Guarded {
    policy: UrlPolicy,
}

impl Resolve for Guarded {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found.iter().copied().filter(|a| policy.address_allowed(a.ip())).collect();
            if allowed.is_empty() && !found.is_empty() {
                return Err(format!("{host} {REFUSED_ADDRESS}").into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// Sends e-mail through the SMTP server of `SMTP_URL`.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Mailer {
    pub fn new(transport: AsyncSmtpTransport<Tokio1Executor>, from: Mailbox) -> Self {
        Self { transport, from }
    }

    /// Sends the delivery's mail to `to`. Its `Message-ID` is derived from
    /// the delivery, so a resend is recognisable as the same message.
    pub async fn send(&self, due: &Due, to: &str) -> Sent {
        let to: Mailbox = match to.parse() {
            Ok(to) => to,
            Err(error) => return Sent::permanent(format!("not an address: {error}")),
        };
        let header = |name: &'static str, value: String| HeaderValue::new(HeaderName::new_from_ascii_str(name), value);
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(due.subject.clone().unwrap_or_default())
            .message_id(Some(format!("<{}@notifier.order-system>", due.delivery_id)))
            .header(ContentType::TEXT_PLAIN)
            .raw_header(header("Auto-Submitted", "auto-generated".into()))
            .raw_header(header("X-Order-Id", due.order_id.to_string()))
            .raw_header(header("X-Event-Type", due.event_type.clone()))
            .body(due.body.clone());
        let message = match message {
            Ok(message) => message,
            Err(error) => return Sent::permanent(format!("the message cannot be built: {error}")),
        };
        match self.transport.send(message).await {
            Ok(response) => Sent::Taken { status_code: Some(u16::from(response.code())) },
            Err(error) => Sent::Failed {
                status_code: error.status().map(u16::from),
                error: chain(&error),
                permanent: error.is_permanent(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    #[tokio::test]
    async fn names_that_resolve_inside_are_refused_unless_allowed() {
        let strict = Guarded { policy: UrlPolicy::default() };
        let refused = strict.resolve(Name::from_str("localhost").unwrap()).await.err().expect("refused");
        assert!(refused.to_string().contains(REFUSED_ADDRESS), "{refused}");
        let open = Guarded { policy: UrlPolicy { allowed_hosts: Vec::new(), allow_private: true } };
        let found: Vec<SocketAddr> = open.resolve(Name::from_str("localhost").unwrap()).await.unwrap().collect();
        assert!(found.iter().all(|a| a.ip().is_loopback()) && !found.is_empty(), "{found:?}");
    }
}
