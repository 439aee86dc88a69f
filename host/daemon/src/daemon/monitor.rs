//! Probe results: collected from the scheduler, batched to the master
//! (fan-in), and judged there into committed transitions.

use super::*;

impl Daemon {
    /// What the scheduler probes (and `/metrics` names its probes by),
    /// from the applied config: at start and whenever the checks change.
    pub(super) fn reschedule(&mut self) {
        self.schedule.send_replace(Arc::new(scheduler::scheduled(&self.cluster)));
        self.metrics.set_names(self.cluster.checks.iter().map(|c| (c.id.as_str(), c.name.as_str())));
    }

    pub(super) fn sync_verdicts(&mut self) {
        let checks: Vec<qu_core::monitor::Tracked> = self
            .cluster
            .checks
            .iter()
            .filter(|c| !c.disabled)
            .map(|c| {
                let rounds = qu_core::monitor::Rounds { down: c.rounds_down, up: c.rounds_up };
                (c.id.clone(), c.interval.as_millis() as u64, self.cluster.check_state(&c.id), rounds)
            })
            .collect();
        self.verdicts.sync_with_rounds(&checks);
    }

    /// Sends this node's latest results to the master (or, on the master,
    /// hands them to its verdicts). Undelivered results stay for the next try.
    pub(super) fn fan_in(&mut self) {
        let now = self.now();
        if now < self.next_fanin || self.unsent.is_empty() {
            return;
        }
        self.next_fanin = now + FANIN_MS;
        if self.core.role() == Role::Master {
            let me = self.me();
            for report in std::mem::take(&mut self.unsent).into_values() {
                self.verdicts.record(me, &report, now);
            }
            return;
        }
        let Some(master) = self.core.master().filter(|m| self.core.is_live(m)) else { return };
        let batch: Vec<Report> = self.unsent.values().cloned().collect();
        let endpoint = self.endpoint.clone();
        match self.links.send(master, PeerNotice::Results(batch), now, &endpoint, &self.events) {
            Ok(()) => self.unsent.clear(),
            Err(error) => tracing::debug!(%master, %error, "results not delivered yet"),
        }
    }

    /// One report from the scheduler: a finished probe, or rounds skipped.
    pub(super) fn on_round(&mut self, round: scheduler::Round) {
        let (report, lateness) = match round {
            scheduler::Round::Skipped(n) => {
                self.probes_skipped += n;
                return;
            }
            scheduler::Round::Probed(report, lateness) => (report, lateness),
        };
        self.probes_run += 1;
        self.metrics.probed(&report);
        if self.lateness_us.len() >= LATENESS_WINDOW {
            self.lateness_us.pop_front();
        }
        self.lateness_us.push_back(lateness.as_micros().min(u64::MAX as u128) as u64);
        if lateness > Duration::from_millis(50) {
            tracing::debug!(check = %report.check_id, lateness_ms = lateness.as_millis() as u64, "probe started late");
        }
        if self.unsent.len() < UNSENT_REPORTS_MAX || self.unsent.contains_key(&report.check_id) {
            self.unsent.insert(report.check_id.clone(), report);
        }
    }

    /// The master turns verdicts that held for `hysteresis` rounds into
    /// committed transitions.
    pub(super) fn judge(&mut self) {
        if !self.core.can_serve() {
            return;
        }
        let members = self.core.config().members.clone();
        let now = self.now();
        let since = self.wall();
        let transitions: Vec<Transition> = self
            .verdicts
            .evaluate(&members, self.cluster.settings.hysteresis, now)
            .into_iter()
            .map(|proposal| Transition {
                check_id: proposal.check_id,
                status: CheckStatus {
                    state: proposal.to,
                    from: proposal.from,
                    since,
                    transition: String::new(),
                    ok: proposal.ok,
                    failing: proposal.failing,
                    total: proposal.total,
                    detail: proposal.detail,
                    reminded: Default::default(),
                    acked: None,
                },
            })
            .collect();
        if !transitions.is_empty() {
            self.queue.push_back((Mutation::RecordTransitions { transitions }, Waiter::Internal));
        }
        self.remind();
    }

    /// The master commits the reminders that are due (one batch at a time:
    /// none while one is queued or in flight).
    fn remind(&mut self) {
        let pending = |m: &Mutation| matches!(m, Mutation::RecordReminders { .. });
        if self.queue.iter().any(|(m, _)| pending(m)) || self.inflight.as_ref().is_some_and(|p| pending(&p.mutation)) {
            return;
        }
        let reminders = qu_core::alerting::reminders_due(&self.cluster, self.wall());
        if !reminders.is_empty() && self.queue.len() < QUEUED_MUTATIONS_MAX / 2 {
            self.queue.push_back((Mutation::RecordReminders { reminders }, Waiter::Internal));
        }
    }
}
