//! The driver side of alert delivery: when this node may act, what the
//! dispatcher is told after each commit and each sink answer, and the
//! results it asks to propose.

use super::*;

impl Daemon {
    /// Whether this node may send alerts: master with a lease. (The
    /// dispatcher sends nothing until a commit of this tenure, so a master
    /// that has not made its fresh commit yet sends nothing either.)
    pub(super) fn may_act(&self) -> bool {
        // The lease as of now, not only as of the core's last step.
        self.core.role() == Role::Master && self.core.can_serve() && self.core.lease_valid_at(self.now())
    }

    /// Every tick: tells the dispatcher whether this node may act (it
    /// aborts sends on the edge) and lets it start what is due.
    pub(super) fn deliver(&mut self) {
        let (now, acting, master) = (self.now(), self.may_act(), self.me());
        let cx = delivery::Context { cluster: &self.cluster, master, plugins: &self.plugins, events: &self.events };
        let results = self.delivery.may_act(now, acting, &cx);
        self.propose_results(results);
    }

    /// A proposal of this master committed: the applied config is now
    /// the committed one, the only one the dispatcher acts on.
    pub(super) fn delivery_committed(&mut self, id: qu_core::consensus::ConfigId) {
        if self.cluster.version != id.version || self.cluster.term != id.term {
            return;
        }
        let (now, acting, master) = (self.now(), self.may_act(), self.me());
        let cx = delivery::Context { cluster: &self.cluster, master, plugins: &self.plugins, events: &self.events };
        let mut results = self.delivery.may_act(now, acting, &cx);
        results.extend(self.delivery.committed(now, &cx));
        self.propose_results(results);
    }

    pub(super) fn delivery_attempted(
        &mut self,
        key: String,
        attempt: u32,
        result: Result<(), qu_plugin::CallError>,
        took: Duration,
    ) {
        self.metrics.delivery_attempt(result.is_ok());
        let (now, acting, master) = (self.now(), self.may_act(), self.me());
        let cx = delivery::Context { cluster: &self.cluster, master, plugins: &self.plugins, events: &self.events };
        // Whether it may still act first: an answer between two ticks must
        // not start the next send on a lease that ran out meanwhile.
        let mut results = self.delivery.may_act(now, acting, &cx);
        results.extend(self.delivery.attempted(now, key, attempt, result, took, &cx));
        self.propose_results(results);
    }

    /// Proposes finished deliveries at once (the shorter the time between a
    /// send and its commit, the rarer a re-send after a crash). With the
    /// queue full they wait: the dispatcher proposes them again.
    pub(super) fn propose_results(&mut self, results: Vec<qu_core::config::DeliveryResult>) {
        if !results.is_empty() && self.queue.len() < QUEUED_MUTATIONS_MAX / 2 {
            self.queue.push_back((Mutation::FinishDeliveries { results }, Waiter::Internal));
        }
    }
}
