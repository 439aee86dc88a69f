use std::fmt;
use std::time::Duration;

/// Why a plugin call failed; the host acts on the case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The configuration is wrong; nothing helps until the operator changes
    /// it. From `validate`, this refuses the check or alert.
    Config(String),
    /// A temporary failure: the host may retry (sinks: after `retry_after`
    /// when given, otherwise with its own backoff).
    Transient { message: String, retry_after: Option<Duration> },
    /// A failure retrying will not fix.
    Permanent(String),
}

impl Error {
    /// A configuration error.
    pub fn config(message: impl Into<String>) -> Self {
        Self::Config(message.into())
    }

    /// A transient error without a retry hint.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::Transient { message: message.into(), retry_after: None }
    }

    /// A transient error to retry after `after`.
    pub fn retry_after(message: impl Into<String>, after: Duration) -> Self {
        Self::Transient { message: message.into(), retry_after: Some(after) }
    }

    /// A permanent error.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::Permanent(message.into())
    }

    /// The message, whatever the case.
    pub fn message(&self) -> &str {
        match self {
            Self::Config(m) | Self::Permanent(m) => m,
            Self::Transient { message, .. } => message,
        }
    }

    /// During validation every failure is a configuration problem.
    pub(crate) fn into_config(self) -> Self {
        match self {
            Self::Config(m) => Self::Config(m),
            other => Self::Config(other.message().to_string()),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for Error {}

impl From<crate::http::HttpError> for Error {
    /// Network trouble is transient; a denied destination is a
    /// configuration problem (the allow list or the target must change).
    fn from(error: crate::http::HttpError) -> Self {
        match error {
            crate::http::HttpError::Denied(_) | crate::http::HttpError::InvalidUrl(_) => {
                Self::Config(error.to_string())
            }
            other => Self::transient(other.to_string()),
        }
    }
}
