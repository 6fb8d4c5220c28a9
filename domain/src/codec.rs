//! How domain events become stored JSON and back: an explicit type name, a
//! schema version per type, and upcasters that lift old versions to the current one.
//!
//! Event enums are serialised by serde as `{"type": <variant>, "data": {...}}`;
//! the store keeps `type` in its own column and `data` as the payload.

use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;

/// A domain event that can be stored.
pub trait EventPayload: Sized {
    /// The stable type name stored beside the payload (`OrderPlaced`).
    fn event_type(&self) -> &'static str;

    /// The schema version this code writes for the event's type.
    fn schema_version(&self) -> u16;

    /// The JSON payload (without the type name).
    fn to_payload(&self) -> Value;

    /// Loads a stored event, upcasting older schema versions.
    fn from_stored(event_type: &str, schema_version: u16, payload: Value) -> Result<Self, DecodeError>;
}

/// A stored event this code cannot load.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error("event type {event_type:?} has no schema version {version}")]
    UnknownVersion { event_type: String, version: u16 },
    #[error("payload of {event_type:?} does not match its schema: {source}")]
    Payload { event_type: String, source: serde_json::Error },
}

/// Splits an adjacently tagged event into its payload.
pub(crate) fn payload_of<E: Serialize>(event: &E) -> Value {
    match serde_json::to_value(event) {
        Ok(Value::Object(mut map)) => map.remove("data").unwrap_or(Value::Object(Default::default())),
        // Event enums are plain data: serialising them cannot fail.
        other => unreachable!("event serialised to {other:?}"),
    }
}

/// Rebuilds an adjacently tagged event from its type and (current-version) payload.
pub(crate) fn event_from<E: DeserializeOwned>(event_type: &str, payload: Value) -> Result<E, DecodeError> {
    let tagged = serde_json::json!({ "type": event_type, "data": payload });
    serde_json::from_value(tagged).map_err(|source| {
        if source.to_string().contains("unknown variant") {
            DecodeError::UnknownType(event_type.to_owned())
        } else {
            DecodeError::Payload { event_type: event_type.to_owned(), source }
        }
    })
}

/// Implements [`EventPayload`] for an adjacently tagged event enum.
///
/// `versions` lists the types whose current schema is newer than 1, and
/// `upcast` is a function `(type, version, payload) -> Result<payload>` that
/// lifts an older payload to the current one.
macro_rules! event_payload {
    ($enum:ty { $($variant:ident),+ $(,)? }, versions: { $($vtype:ident => $v:expr),* $(,)? }, upcast: $upcast:expr) => {
        impl $crate::codec::EventPayload for $enum {
            fn event_type(&self) -> &'static str {
                match self { $(Self::$variant { .. } => stringify!($variant),)+ }
            }

            fn schema_version(&self) -> u16 {
                Self::current_version(self.event_type())
            }

            fn to_payload(&self) -> serde_json::Value {
                $crate::codec::payload_of(self)
            }

            fn from_stored(
                event_type: &str,
                schema_version: u16,
                payload: serde_json::Value,
            ) -> Result<Self, $crate::codec::DecodeError> {
                let current = Self::current_version(event_type);
                if schema_version == 0 || schema_version > current {
                    return Err($crate::codec::DecodeError::UnknownVersion {
                        event_type: event_type.to_owned(),
                        version: schema_version,
                    });
                }
                let upcast: fn(&str, u16, serde_json::Value) -> Result<serde_json::Value, $crate::codec::DecodeError> = $upcast;
                let payload = if schema_version < current { upcast(event_type, schema_version, payload)? } else { payload };
                $crate::codec::event_from(event_type, payload)
            }
        }

        impl $enum {
            /// The schema version this code writes for an event type.
            pub fn current_version(event_type: &str) -> u16 {
                match event_type {
                    $(stringify!($vtype) => $v,)*
                    _ => 1,
                }
            }
        }
    };
}
pub(crate) use event_payload;

/// The upcaster of event types that have only ever had version 1.
pub(crate) fn no_upcast(event_type: &str, version: u16, _payload: Value) -> Result<Value, DecodeError> {
    Err(DecodeError::UnknownVersion { event_type: event_type.to_owned(), version })
}
