use std::time::Duration;

use crate::__checker::types as wit;
use crate::{Config, Error, Info};

/// An extra check type.
pub trait Check {
    /// Name, version, description, what TARGET means, and the settings.
    fn info() -> Info;

    /// Checks settings and target before the check is committed (on the
    /// node where `qu check add` runs). Unknown and missing settings are
    /// already refused from [`Check::info`]; add what else must hold.
    fn validate(config: &Config, target: &str) -> Result<(), Error> {
        let _ = (config, target);
        Ok(())
    }

    /// Probes `target` once. `Err` is a failed probe (a DOWN vote) whose
    /// message is shown as the detail; a `Config` error is not a vote.
    fn check(config: &Config, target: &str) -> Result<Outcome, Error>;
}

/// What a probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Up,
    Down,
    /// Works but needs attention soon; counts as a DOWN vote.
    Degraded,
}

/// A named number reported with an outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub name: String,
    pub value: f64,
}

/// The result of one probe.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub status: Status,
    pub message: String,
    /// The probed operation's duration; measured by the SDK around
    /// [`Check::check`] when not set.
    pub latency: Option<Duration>,
    pub metrics: Vec<Metric>,
}

impl Outcome {
    pub fn new(status: Status, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), latency: None, metrics: Vec::new() }
    }

    pub fn up(message: impl Into<String>) -> Self {
        Self::new(Status::Up, message)
    }

    pub fn down(message: impl Into<String>) -> Self {
        Self::new(Status::Down, message)
    }

    pub fn degraded(message: impl Into<String>) -> Self {
        Self::new(Status::Degraded, message)
    }

    pub fn latency(mut self, latency: Duration) -> Self {
        self.latency = Some(latency);
        self
    }

    pub fn metric(mut self, name: impl Into<String>, value: f64) -> Self {
        self.metrics.push(Metric { name: name.into(), value });
        self
    }

    pub(crate) fn into_wit(self, measured: Duration) -> wit::ProbeOutcome {
        wit::ProbeOutcome {
            status: match self.status {
                Status::Up => wit::Status::Up,
                Status::Down => wit::Status::Down,
                Status::Degraded => wit::Status::Degraded,
            },
            latency_us: self.latency.unwrap_or(measured).as_micros().min(u64::MAX as u128) as u64,
            message: self.message,
            metrics: self.metrics.into_iter().map(|m| wit::Metric { name: m.name, value: m.value }).collect(),
        }
    }
}
