//! The service manager's side channel (`Type=notify`): `READY=1` once the
//! listeners are bound and the config is loaded, `WATCHDOG=1` from the
//! event loop itself (so a wedged loop stops the pings and systemd
//! restarts the node), and `STATUS=` with the role and term whenever they
//! change. Without `$NOTIFY_SOCKET` every call is a no-op.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

#[derive(Debug)]
pub struct Notifier {
    enabled: bool,
    /// Half the watchdog interval systemd asked for, if it asked.
    ping_every: Option<Duration>,
    last_ping: Option<Instant>,
    status: String,
}

impl Notifier {
    pub fn from_env() -> Self {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some();
        let mut usec = 0u64;
        let ping_every = (enabled && sd_notify::watchdog_enabled(false, &mut usec) && usec > 0)
            .then(|| Duration::from_micros(usec / 2));
        if let Some(every) = ping_every {
            tracing::debug!(every_ms = every.as_millis() as u64, "systemd watchdog enabled");
        }
        Self { enabled, ping_every, last_ping: None, status: String::new() }
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if !self.enabled {
            return;
        }
        if let Err(error) = sd_notify::notify(false, states) {
            tracing::debug!(%error, "sd_notify failed");
        }
    }

    /// The node serves: listeners bound, config loaded.
    pub fn ready(&mut self, status: String) {
        self.send(&[NotifyState::Ready, NotifyState::Status(&status)]);
        self.status = status;
        self.last_ping = Some(Instant::now());
    }

    /// Called from the event loop on every tick: pings the watchdog when
    /// due, and says the status when it changed.
    pub fn tick(&mut self, status: String) {
        if self.ping_every.is_some_and(|every| self.last_ping.is_none_or(|last| last.elapsed() >= every)) {
            self.send(&[NotifyState::Watchdog]);
            self.last_ping = Some(Instant::now());
        }
        if status != self.status {
            self.send(&[NotifyState::Status(&status)]);
            self.status = status;
        }
    }

    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }
}
