use crate::__sink::types as wit;
use crate::{Config, Error, Info};

/// An alert sink.
pub trait Sink {
    /// Name, version, description and the settings.
    fn info() -> Info;

    /// Checks settings before the alert is committed. Unknown and missing
    /// settings are already refused from [`Sink::info`].
    fn validate(config: &Config) -> Result<(), Error> {
        let _ = config;
        Ok(())
    }

    /// Delivers one event. Return `Error::Transient` for failures worth
    /// retrying (the host backs off and retries until the delivery
    /// deadline), `Error::Permanent` for the rest.
    fn send(event: &Event, config: &Config) -> Result<(), Error>;
}

/// One alert: a committed transition of a check (or a test event), with
/// the subject and body already rendered by the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub check_id: String,
    pub check_name: String,
    pub check_type: String,
    pub check_target: String,
    pub from_state: String,
    pub to_state: String,
    /// `DOWN`, `RECOVERED` or `UP`.
    pub verb: String,
    pub ok: u32,
    pub failing: u32,
    pub total: u32,
    pub detail: String,
    pub subject: String,
    pub body: String,
    /// `transition-id/alert-id`, the same for every attempt.
    pub idempotency_key: String,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    pub master: String,
    /// A test event (`qu alert test`, `qu check test`).
    pub test: bool,
}

impl Event {
    /// A DOWN of a check `web` (an HTTPS target, 2 of 3 nodes failing):
    /// what a sink's unit tests start from, changing what they test.
    pub fn sample() -> Self {
        Self {
            check_id: "c0a1b2c3".into(),
            check_name: "web".into(),
            check_type: "http".into(),
            check_target: "https://example.com/".into(),
            from_state: "up".into(),
            to_state: "down".into(),
            verb: "DOWN".into(),
            ok: 1,
            failing: 2,
            total: 3,
            detail: "status 503 (expected 2xx)".into(),
            subject: "DOWN: web".into(),
            body: "web is DOWN: https://example.com/\nExpected status 2xx; status 503".into(),
            idempotency_key: "3.14/a1b2c3d4".into(),
            timestamp_ms: 1_767_225_600_000,
            master: "7a1e0c3e-1111-4222-8333-444455556666".into(),
            test: false,
        }
    }

    pub(crate) fn from_wit(e: wit::AlertEvent) -> Self {
        Self {
            check_id: e.check_id,
            check_name: e.check_name,
            check_type: e.check_type,
            check_target: e.check_target,
            from_state: e.from_state,
            to_state: e.to_state,
            verb: e.verb,
            ok: e.ok,
            failing: e.failing,
            total: e.total,
            detail: e.detail,
            subject: e.subject,
            body: e.body,
            idempotency_key: e.idempotency_key,
            timestamp_ms: e.timestamp_ms,
            master: e.master,
            test: e.test,
        }
    }
}
