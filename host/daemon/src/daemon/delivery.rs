//! The master's alert delivery, executed: the pure
//! [`qu_core::alerting::Dispatcher`] decides (what to send, when to retry,
//! when to give up, what to propose); this room runs its sends as tasks on
//! the plugin runtime, aborts them when told, and logs its decisions. It
//! owns its fields and knows nothing of the event loop beyond the one
//! event its sends report back with.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use qu_core::NodeId;
use qu_core::alerting::{
    CommittedView, Decision, DispatchInput, DispatchLimits, DispatchOutput, Dispatcher, FailReason, SendOutcome,
};
use qu_core::config::{ClusterConfig, DeliveryResult};
use tokio::sync::mpsc;

use super::event::{DeliveryEvent, Event};
use crate::plugins::Registry;

/// Sends in flight at once.
const DELIVERIES_CONCURRENT_MAX: usize = 16;

/// What a step needs from the rest of the daemon.
pub(super) struct Context<'a> {
    /// The config the records and alerts are read from (the committed one
    /// whenever the dispatcher acts on it).
    pub cluster: &'a ClusterConfig,
    pub master: NodeId,
    pub plugins: &'a Arc<Registry>,
    pub events: &'a mpsc::Sender<Event>,
}

pub(super) struct Delivery {
    dispatch: Dispatcher,
    sends: HashMap<String, tokio::task::JoinHandle<()>>,
}

impl Delivery {
    pub fn new(seed: u64) -> Self {
        let limits = DispatchLimits { concurrent_max: DELIVERIES_CONCURRENT_MAX, ..DispatchLimits::default() };
        Self { dispatch: Dispatcher::new(limits, seed), sends: HashMap::new() }
    }

    /// This node may act (master with a lease) or not; `now_ms` is the
    /// daemon's monotonic clock. Returns the results to propose.
    pub fn may_act(&mut self, now_ms: u64, acting: bool, cx: &Context<'_>) -> Vec<DeliveryResult> {
        let out = self.dispatch.step(now_ms, DispatchInput::MayAct(acting));
        self.execute(out, cx)
    }

    /// `cx.cluster` was just committed by a majority.
    pub fn committed(&mut self, now_ms: u64, cx: &Context<'_>) -> Vec<DeliveryResult> {
        let out = self.dispatch.step(now_ms, DispatchInput::Committed(CommittedView::of(cx.cluster)));
        self.execute(out, cx)
    }

    /// One send finished.
    pub fn attempted(
        &mut self,
        now_ms: u64,
        key: String,
        attempt: u32,
        result: Result<(), qu_plugin::CallError>,
        took: Duration,
        cx: &Context<'_>,
    ) -> Vec<DeliveryResult> {
        self.sends.remove(&key);
        let outcome = outcome_of(result);
        if outcome == SendOutcome::Delivered {
            let (alert, check, verb) = names(cx.cluster, &key);
            tracing::info!(
                %alert, %check, key = %key, attempt,
                "alert {alert}: {verb} {check} delivered (attempt {attempt}, {} ms)",
                took.as_millis()
            );
        }
        let out = self.dispatch.step(now_ms, DispatchInput::Attempt { key, attempt, outcome });
        self.execute(out, cx)
    }

    fn execute(&mut self, outputs: Vec<DispatchOutput>, cx: &Context<'_>) -> Vec<DeliveryResult> {
        let mut propose = Vec::new();
        for output in outputs {
            match output {
                DispatchOutput::Send { key, attempt } => self.start(key, attempt, cx),
                DispatchOutput::AbortAll => {
                    let stopped = self.sends.len();
                    for (_, task) in self.sends.drain() {
                        task.abort();
                    }
                    if stopped > 0 {
                        tracing::warn!(
                            "alerts: stopped {stopped} delivery attempt(s): this node may no longer act as master"
                        );
                    }
                }
                DispatchOutput::Propose(results) => propose.extend(results),
                DispatchOutput::Decided { key, attempt, decision, error } => {
                    log_decision(cx, &key, attempt, &decision, &error)
                }
            }
        }
        propose
    }

    fn start(&mut self, key: String, attempt: u32, cx: &Context<'_>) {
        let master = cx.master.to_string();
        let Some((context, alert, at)) = crate::alerts::delivery_context(cx.cluster, &key, &master) else {
            // Not in this config (cannot happen for a committed record):
            // report it as a retry so the dispatcher's books stay right.
            let events = cx.events.clone();
            tokio::spawn(async move {
                let result = Err(qu_plugin::CallError::Unavailable {
                    plugin: "alert".into(),
                    reason: format!("delivery {key} is not in this node's config"),
                });
                let _ = events
                    .send(Event::Delivery(DeliveryEvent::Attempt { key, attempt, result, took: Duration::ZERO }))
                    .await;
            });
            return;
        };
        let (event, template_error) = crate::alerts::event(&context, &alert, &key, at);
        if let Some(error) = template_error {
            tracing::warn!(alert = %alert.name, "alert {}: {error}; sending the default rendering", alert.name);
        }
        let settings: Vec<(String, String)> = alert.config.clone().into_iter().collect();
        let (registry, events, kind, task_key) =
            (cx.plugins.clone(), cx.events.clone(), alert.kind.clone(), key.clone());
        let task = tokio::spawn(async move {
            let started = std::time::Instant::now();
            let result = match registry.get_ready(&kind, Duration::from_secs(30)).await {
                Ok(plugin) => registry.runtime().send(&plugin, &event, &settings).await,
                Err(reason) => Err(qu_plugin::CallError::Unavailable { plugin: kind, reason: reason.to_string() }),
            };
            let took = started.elapsed();
            let _ = events.send(Event::Delivery(DeliveryEvent::Attempt { key: task_key, attempt, result, took })).await;
        });
        if let Some(old) = self.sends.insert(key, task) {
            old.abort();
        }
    }
}

/// A sink's answer as the dispatcher sees it: timeouts and an unavailable
/// plugin are worth retrying; a permanent error or a broken plugin is not.
pub(super) fn outcome_of(result: Result<(), qu_plugin::CallError>) -> SendOutcome {
    use qu_plugin::{CallError, PluginError};
    match result {
        Ok(()) => SendOutcome::Delivered,
        Err(error) => {
            let after = match &error {
                CallError::Plugin { error: PluginError::Transient { retry_after, .. }, .. } => Some(*retry_after),
                CallError::Timeout { .. } | CallError::Unavailable { .. } | CallError::Busy { .. } => Some(None),
                _ => None,
            };
            match after {
                Some(after) => SendOutcome::Retry { error: error.to_string(), after },
                None => SendOutcome::Failed { error: error.to_string() },
            }
        }
    }
}

/// (alert name, check name, verb) of a record, for logs.
fn names(cluster: &ClusterConfig, key: &str) -> (String, String, &'static str) {
    let Some(record) = cluster.deliveries.get(key) else { return (key.to_string(), String::new(), "") };
    let alert =
        cluster.alerts.iter().find(|a| a.id == record.alert_id).map_or(record.alert_id.clone(), |a| a.name.clone());
    let check = crate::alerts::subject_name(cluster, &record.check_id);
    let verb = if record.reminder.is_some() { "REMINDER" } else { qu_core::alerting::verb(record.from, record.to) };
    (alert, check, verb)
}

fn log_decision(cx: &Context<'_>, key: &str, attempt: u32, decision: &Decision, error: &str) {
    let (alert, check, verb) = names(cx.cluster, key);
    match decision {
        Decision::Delivered => {}
        Decision::RetryIn(delay) => tracing::warn!(
            %alert, %check, key = %key, attempt,
            "alert {alert}: {verb} {check} not delivered (attempt {attempt}): {error}; retrying in {}",
            humantime::format_duration(Duration::from_millis(delay.as_millis() as u64))
        ),
        Decision::Failed(FailReason::Permanent) => tracing::error!(
            %alert, %check, key = %key, attempt,
            "alert {alert}: {verb} {check} FAILED for good (attempt {attempt}): {error}"
        ),
        Decision::Failed(FailReason::Deadline { deadline }) => tracing::error!(
            %alert, %check, key = %key, attempt,
            "alert {alert}: {verb} {check} FAILED: not delivered within {} after {attempt} attempts; last error: {error}",
            humantime::format_duration(*deadline)
        ),
        Decision::Failed(FailReason::Blocked(why)) => {
            tracing::error!(key = %key, "alerts: delivery {key} FAILED: {why}")
        }
    }
}
