//! Hand edits of cluster.yaml: noticed by polling the file, proposed
//! through the master, and set aside (never lost) when a newer version
//! overtakes one that was not replicated.

use super::*;

impl Daemon {
    /// A newer version is about to replace cluster.yaml while it holds a
    /// hand edit that has not been replicated: keep the edit beside it
    /// rather than lose it, and say so.
    pub(super) fn set_aside_unreplicated_edit(&mut self, incoming: &ClusterConfig) {
        let path = self.data.cluster_yaml();
        let Ok(text) = qu_store::read_text(&path) else { return };
        if *text == *self.written || text.trim().is_empty() {
            return;
        }
        // The incoming version may be this very edit, committed.
        if let Ok(mut edited) = ClusterConfig::parse(&text) {
            edited.version = incoming.version;
            edited.term = incoming.term;
            edited.updated_at = incoming.updated_at;
            edited.updated_by = incoming.updated_by;
            if edited == *incoming {
                return;
            }
        }
        let incoming = incoming.version;
        let aside = self.data.root().join(format!("cluster.yaml.unreplicated-{}", self.cluster.version));
        match qu_store::write_atomic(&aside, text.as_bytes(), SECRET_FILE_MODE) {
            Ok(()) => tracing::warn!(
                saved = %aside.display(),
                "manual-edit: version {incoming} arrived before the hand edit was replicated; the edit is saved as {} — re-apply it to the new cluster.yaml",
                aside.display()
            ),
            Err(error) => tracing::warn!(%error, "manual-edit: could not save the unreplicated hand edit aside"),
        }
        self.pending_edit = None;
    }

    /// Looks for a hand edit of cluster.yaml and forwards it as a replace.
    pub(super) fn poll_file(&mut self) {
        let Ok(text) = qu_store::read_text(&self.data.cluster_yaml()) else { return };
        if *text == *self.written {
            self.pending_edit = None;
            return;
        }
        if self.bad_edit.as_deref() == Some(text.as_str()) {
            return;
        }
        let edited = match ClusterConfig::parse(&text) {
            Ok(config) => config,
            Err(error) => {
                tracing::warn!("manual-edit: parse cluster.yaml: {error} — ignoring");
                self.bad_edit = Some(text);
                return;
            }
        };
        let already_pending = self.pending_edit.as_ref().is_some_and(|(t, _)| *t == text);
        if already_pending && self.inflight.is_some() {
            return;
        }
        if !already_pending {
            tracing::info!("manual-edit: cluster.yaml changed externally — replicating via master");
        }
        self.pending_edit = Some((text.clone(), edited.clone()));
        let mutation = Mutation::Replace { config: Box::new(edited), base_version: self.cluster.version };
        let (reply, answer) = oneshot::channel();
        self.submit(mutation, Waiter::Edit(reply));
        let events = self.events.clone();
        tokio::spawn(async move {
            match answer.await {
                Ok(Err(failure @ Failure::Refused(_))) => {
                    let message = failure.message();
                    tracing::warn!("manual-edit: not replicated: {message}; fix cluster.yaml and save again");
                    let _ = events.send(Event::Control(ControlEvent::EditRefused { text })).await;
                }
                Ok(Err(failure)) => {
                    let message = failure.message();
                    tracing::warn!("manual-edit: not replicated yet: {message}; retrying while the edit stands");
                }
                Ok(Ok(())) | Err(_) => {}
            }
        });
    }
}
