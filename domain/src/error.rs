//! Why a command was refused.

use serde::{Deserialize, Serialize};

/// A command the domain refuses. Each variant maps to one HTTP status class.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// The command breaks a rule of its own (422): bad quantity, duplicate sku, ...
    #[error("the command breaks {} rule(s): {}", .0.len(), summarise(.0))]
    Invalid(Vec<FieldError>),
    /// The aggregate the command addresses does not exist (404).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The aggregate's current state forbids the command (409).
    #[error("{0}")]
    Conflict(String),
}

impl DomainError {
    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid(vec![FieldError::new(field, message)])
    }

    pub(crate) fn conflict(message: impl Into<String>) -> Self {
        Self::Conflict(message.into())
    }
}

/// One broken rule, named by the path of the field that breaks it (`lines[2].quantity`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

fn summarise(errors: &[FieldError]) -> String {
    errors.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; ")
}
