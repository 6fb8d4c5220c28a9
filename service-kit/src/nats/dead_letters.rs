//! The dead-letter stream: what the consumers give up on (the saga
//! participants, the notifier), with why, and what an operator does with it:
//! read it, send it again to its subject, or discard it.

use std::time::Duration;

use async_nats::jetstream::stream::{RawMessageErrorKind, Stream};
use async_nats::jetstream::{self, message::StreamMessage};
use async_nats::HeaderMap;

/// Headers of a dead-lettered message, beside the original ones.
pub const ERROR: &str = "Dead-Letter-Error";
pub const CONSUMER: &str = "Dead-Letter-Consumer";
pub const SUBJECT: &str = "Dead-Letter-Subject";
pub const DELIVERIES: &str = "Dead-Letter-Deliveries";

/// Longest one JetStream request may take here.
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("NATS is unavailable: {0}")]
    Unavailable(String),
    #[error("the dead letter names no subject to send it to")]
    NoSubject,
}

fn unavailable(error: impl std::fmt::Display) -> DeadLetterError {
    DeadLetterError::Unavailable(error.to_string())
}

/// A message in the dead-letter stream.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub sequence: u64,
    pub time: chrono::DateTime<chrono::Utc>,
    /// The consumer that gave up, `<participant>-<EventType>`.
    pub consumer: String,
    /// Where it was published first (and is sent again to).
    pub subject: String,
    pub error: String,
    pub deliveries: u64,
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

impl DeadLetter {
    fn from_message(message: StreamMessage) -> Self {
        let header = |name: &str| message.headers.get(name).map(|v| v.as_str().to_owned()).unwrap_or_default();
        let mut headers: Vec<(String, String)> = message
            .headers
            .iter()
            .flat_map(|(name, values)| values.iter().map(move |v| (name.to_string(), v.as_str().to_owned())))
            .collect();
        headers.sort();
        let nanos = message.time.unix_timestamp_nanos();
        let time = chrono::DateTime::from_timestamp_nanos(i64::try_from(nanos).unwrap_or(i64::MAX));
        Self {
            sequence: message.sequence,
            time,
            consumer: header(CONSUMER),
            subject: header(SUBJECT),
            error: header(ERROR),
            deliveries: header(DELIVERIES).parse().unwrap_or(0),
            payload: message.payload.to_vec(),
            headers,
        }
    }

    /// A header of the original message (`Correlation-Id`, ...).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Whether the stream ever held `sequence` (JetStream answers an error, not
/// "not found", for one past its end).
fn within(stream: &Stream, sequence: u64) -> bool {
    (1..=stream.cached_info().state.last_sequence).contains(&sequence)
}

/// A dead letter sent again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    pub sequence: u64,
    pub subject: String,
    /// Where the events' stream stored it (a repeat within its duplicate window is not stored again).
    pub stored_as: u64,
    pub duplicate: bool,
}

/// The dead-letter stream `stream`.
#[derive(Clone)]
pub struct DeadLetters {
    js: jetstream::Context,
    stream: String,
}

impl DeadLetters {
    pub fn new(js: jetstream::Context, stream: impl Into<String>) -> Self {
        Self { js, stream: stream.into() }
    }

    async fn stream(&self) -> Result<Option<Stream>, DeadLetterError> {
        match tokio::time::timeout(TIMEOUT, self.js.get_stream(&self.stream)).await.map_err(unavailable)? {
            Ok(stream) => Ok(Some(stream)),
            // No consumer gave up on anything yet: the stream is made with the first dead letter.
            Err(error) if error.to_string().contains("stream not found") => Ok(None),
            Err(error) => Err(unavailable(error)),
        }
    }

    /// Up to `limit` dead letters after sequence `after`, oldest first, of
    /// `consumer` only if given; and the sequence to ask after for more.
    pub async fn page(
        &self,
        consumer: Option<&str>,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<DeadLetter>, Option<u64>), DeadLetterError> {
        let Some(mut stream) = self.stream().await? else { return Ok((Vec::new(), None)) };
        let all =
            stream.info().await.map_err(unavailable)?.config.subjects.first().cloned().unwrap_or_else(|| ">".into());
        let subject = match consumer {
            Some(consumer) => format!("{}.{consumer}", all.trim_end_matches(".>")),
            None => all,
        };
        let mut letters = Vec::new();
        let mut next = after + 1;
        while letters.len() < limit {
            let found = tokio::time::timeout(TIMEOUT, stream.get_first_raw_message_by_subject(&subject, next))
                .await
                .map_err(unavailable)?;
            match found {
                Ok(message) => {
                    next = message.sequence + 1;
                    letters.push(DeadLetter::from_message(message));
                }
                Err(error) if error.kind() == RawMessageErrorKind::NoMessageFound => return Ok((letters, None)),
                Err(error) => return Err(unavailable(error)),
            }
        }
        let more = letters.last().map(|l| l.sequence);
        Ok((letters, more))
    }

    /// The dead letter at `sequence`, if it is there.
    pub async fn get(&self, sequence: u64) -> Result<Option<DeadLetter>, DeadLetterError> {
        let Some(stream) = self.stream().await? else { return Ok(None) };
        if !within(&stream, sequence) {
            return Ok(None);
        }
        let found = tokio::time::timeout(TIMEOUT, stream.get_raw_message(sequence)).await.map_err(unavailable)?;
        match found {
            Ok(message) => Ok(Some(DeadLetter::from_message(message))),
            Err(error) if error.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(error) => Err(unavailable(error)),
        }
    }

    /// Publishes the dead letter again to its original subject, with its
    /// original headers (but its own message id, `replay-<stream>-<sequence>`,
    /// so replaying twice within the events stream's duplicate window stores
    /// it once), then removes it from the dead-letter stream. Every consumer
    /// of that subject receives it; they are idempotent.
    pub async fn replay(&self, sequence: u64) -> Result<Option<Replayed>, DeadLetterError> {
        let Some(letter) = self.get(sequence).await? else { return Ok(None) };
        if letter.subject.is_empty() {
            return Err(DeadLetterError::NoSubject);
        }
        let mut headers = HeaderMap::new();
        for (name, value) in &letter.headers {
            if name.starts_with("Dead-Letter-")
                || name.eq_ignore_ascii_case(async_nats::header::NATS_MESSAGE_ID.as_ref())
            {
                continue;
            }
            headers.append(name.as_str(), value.as_str());
        }
        headers.insert(async_nats::header::NATS_MESSAGE_ID, format!("replay-{}-{sequence}", self.stream).as_str());
        let ack = tokio::time::timeout(TIMEOUT, async {
            self.js
                .publish_with_headers(letter.subject.clone(), headers, letter.payload.clone().into())
                .await
                .map_err(unavailable)?
                .await
                .map_err(unavailable)
        })
        .await
        .map_err(unavailable)??;
        self.discard(sequence).await?;
        Ok(Some(Replayed { sequence, subject: letter.subject, stored_as: ack.sequence, duplicate: ack.duplicate }))
    }

    /// Removes the dead letter at `sequence`; false if it was not there.
    pub async fn discard(&self, sequence: u64) -> Result<bool, DeadLetterError> {
        let Some(stream) = self.stream().await? else { return Ok(false) };
        if !within(&stream, sequence) {
            return Ok(false);
        }
        match tokio::time::timeout(TIMEOUT, stream.delete_message(sequence)).await.map_err(unavailable)? {
            Ok(deleted) => Ok(deleted),
            // "no message found", or "sequence N not found" (10043) once it is gone.
            Err(error) if error.to_string().contains("not found") => Ok(false),
            Err(error) => Err(unavailable(error)),
        }
    }
}
