//! Errors of bus operations.

/// Why a bus operation failed. `Unavailable` is worth retrying; the others are not.
// Clone: one failed batch message fails each of its events alike.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    #[error("bus setup failed: {0}")]
    Setup(String),
    /// What was given cannot be stored (a history record that is not an
    /// update message); retrying will not help.
    #[error("not storable: {0}")]
    Invalid(String),
    /// A stream reached its byte limit and refuses new messages.
    #[error("bus full: {0}")]
    Full(String),
    #[error("bus is closed")]
    Closed,
    /// Stored data cannot be read back whole (a checkpoint part is missing);
    /// retrying will not help.
    #[error("stored data is damaged: {0}")]
    Damaged(String),
}

impl BusError {
    pub(crate) fn unavailable(e: impl std::fmt::Display) -> Self {
        BusError::Unavailable(e.to_string())
    }
}
