//! The configuration model: typed `node.yaml` and `cluster.yaml`.
//!
//! Parsing is a pure function from text to a validated value; unknown fields
//! anywhere are refused with the field and the file named (that is what keeps
//! an older binary from running on a newer schema), and validation reports
//! every problem at once rather than the first.

mod addr;
mod checks;
mod cluster;
pub mod edits;
mod mutation;
mod node;
mod render;
mod replay;
mod time;

pub use addr::HostPort;
pub use checks::{
    BUILT_IN_CHECK_PLUGINS, BUILT_IN_SINK_PLUGINS, HttpSpec, NATIVE_TYPES, NativeSpec, REDIRECTS_MAX, StatusMatcher,
};
pub use cluster::{
    Ack, Alert, Check, CheckStatus, ClusterConfig, ContentStamp, Delivery, DeliveryStatus, MemberStatus, Peer,
    PluginEntry, PluginKind, PluginLimits, Reminder, Settings,
};
pub use mutation::{
    AlertChanges, CheckChanges, DeliveryResult, MemberChange, Mutation, ReminderDue, SETTING_KEYS, Stamp, Transition,
    merge_settings,
};
pub use node::{DEFAULT_BIND, DEFAULT_PORT, NodeConfig, NodeOverrides, SECRET_BITS_MIN, secret_bits, secret_problem};
pub use render::{Renderer, content_hash};
pub use replay::{Replayed, replay};
pub use time::Timestamp;

use std::fmt;

/// A file that could not be accepted, with every problem found in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file name as an operator knows it (`cluster.yaml`, `node.yaml`).
    pub file: String,
    pub problems: Vec<String>,
}

impl ConfigError {
    pub fn new(file: &str, problems: Vec<String>) -> Self {
        Self { file: file.to_string(), problems }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file, self.problems.join("; "))
    }
}

impl std::error::Error for ConfigError {}

/// Parses YAML into `T`, mapping serde's error to one that names the file.
fn parse_yaml<T: serde::de::DeserializeOwned>(file: &str, text: &str, bytes_max: usize) -> Result<T, ConfigError> {
    if text.len() > bytes_max {
        return Err(ConfigError::new(
            file,
            vec![format!("file is {} bytes, larger than the {bytes_max}-byte limit", text.len())],
        ));
    }
    if text.trim().is_empty() {
        return Err(ConfigError::new(file, vec!["file is empty".to_string()]));
    }
    // qu writes every file whole, ending in a newline, and so does any
    // editor set to: a file that stops inside a line was cut short (an
    // interrupted copy, a full disk), and what is left of it may still
    // parse — as a config missing everything after the cut. Never taken.
    if !text.ends_with('\n') {
        return Err(ConfigError::new(
            file,
            vec![
                "the file does not end with a newline: it looks cut short (an interrupted copy or write, a full disk?); \
                 if it is complete, end its last line with a newline"
                    .to_string(),
            ],
        ));
    }
    serde_yaml::from_str(text).map_err(|error| ConfigError::new(file, vec![error.to_string()]))
}
