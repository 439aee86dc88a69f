//! Control requests (`qu ...` on the socket): each is answered from the
//! state, or turned into a mutation to propose, validated first (by a
//! plugin off the event loop where a plugin must judge it).

use super::*;

impl Daemon {
    pub(super) fn on_control(&mut self, request: ControlRequest, reply: oneshot::Sender<ControlResponse>) {
        let answer = match request {
            ControlRequest::Status => return self.control_status(reply),
            ControlRequest::NodeList => ControlResponse::Nodes { peers: self.peer_views() },
            ControlRequest::Settings => ControlResponse::Settings(self.settings_view()),
            ControlRequest::CheckList => ControlResponse::Checks { checks: self.check_list() },
            ControlRequest::AlertList => ControlResponse::Alerts { alerts: self.alert_list() },
            ControlRequest::PluginList => ControlResponse::Plugins { plugins: self.plugins.views(&self.cluster) },
            ControlRequest::AlertTest { alert } => return self.alert_test(alert, reply),
            ControlRequest::CheckTest { check, state } => return self.check_test(check, state, reply),
            ControlRequest::NodeProbe { addr } => {
                return join::probe(self.endpoint.clone(), self.events.clone(), addr, reply);
            }
            ControlRequest::NodeAdd { addr, fingerprint } => return self.node_add(addr, fingerprint, reply),
            change => return self.on_change_request(change, reply),
        };
        let _ = reply.send(answer);
    }

    /// Requests that change the cluster: validated, then proposed.
    fn on_change_request(&mut self, request: ControlRequest, reply: oneshot::Sender<ControlResponse>) {
        let mutation = match request {
            ControlRequest::SettingsSet { key, value } => Mutation::SetSetting { key, value },
            ControlRequest::CheckAdd { mut check } => {
                check.id = format!("c{:07x}", rand::random::<u32>() & 0x0fff_ffff);
                let reply = naming_created(check.id.clone(), reply);
                let (kind, target, settings) = (check.kind.clone(), check.target.clone(), check.settings.clone());
                return self.submit_validated(Mutation::AddCheck { check }, &kind, target, settings, reply);
            }
            ControlRequest::CheckEdit { check, changes } => return self.check_edit(check, changes, reply),
            ControlRequest::AlertAdd { mut alert } => {
                alert.id = format!("a{:07x}", rand::random::<u32>() & 0x0fff_ffff);
                let reply = naming_created(alert.id.clone(), reply);
                let checked = (*alert).clone();
                return self.submit_alert(Mutation::AddAlert { alert }, checked, reply);
            }
            ControlRequest::AlertEdit { alert, changes } => return self.alert_edit(alert, changes, reply),
            ControlRequest::AlertRemove { alert } => Mutation::RemoveAlert { alert },
            ControlRequest::AlertAck { check, reason } => Mutation::Acknowledge { check, reason, by: self.me() },
            ControlRequest::PluginRemove { name } => Mutation::RemovePlugin { name },
            ControlRequest::PluginAdd { name, path, allow, memory_mib, timeout } => {
                return self.plugin_add(name, path, allow, memory_mib, timeout, reply);
            }
            ControlRequest::CheckRemove { check } => Mutation::RemoveCheck { check },
            ControlRequest::CheckSetDisabled { check, disabled } => Mutation::SetCheckDisabled { check, disabled },
            ControlRequest::NodeRemove { node_id } => Mutation::RemovePeer { node_id },
            other => {
                let message = format!("not a change: {other:?}");
                let _ = reply.send(ControlResponse::Error { message });
                return;
            }
        };
        self.submit_checked(mutation, reply);
    }

    /// `qu check edit`: a plugin check's merged settings go to its plugin first.
    fn check_edit(
        &mut self,
        check: String,
        changes: Box<qu_core::config::CheckChanges>,
        reply: oneshot::Sender<ControlResponse>,
    ) {
        let existing = self.cluster.checks.iter().find(|c| c.id == check || c.name == check).cloned();
        let mutation = Mutation::EditCheck { check, changes: changes.clone() };
        let Some(existing) = existing else { return self.submit_checked(mutation, reply) };
        let target = changes.target.clone().unwrap_or(existing.target.clone());
        let mut settings = existing.settings.clone();
        qu_core::config::merge_settings(&mut settings, &changes.settings);
        self.submit_validated(mutation, &existing.kind, target, settings, reply);
    }

    /// `qu alert edit`: the merged alert goes to its sink's validation first.
    fn alert_edit(
        &mut self,
        alert: String,
        changes: Box<qu_core::config::AlertChanges>,
        reply: oneshot::Sender<ControlResponse>,
    ) {
        let Some(mut merged) = self.cluster.alerts.iter().find(|a| a.id == alert || a.name == alert).cloned() else {
            return self.submit_checked(Mutation::EditAlert { alert, changes }, reply);
        };
        changes.apply_to(&mut merged);
        self.submit_alert(Mutation::EditAlert { alert, changes }, merged, reply);
    }

    /// `qu status`: a follower shows the master's view of the checks.
    fn control_status(&mut self, reply: oneshot::Sender<ControlResponse>) {
        // A follower shows the master's view of the checks.
        let master = self.core.master().filter(|m| *m != self.me() && self.core.is_live(m));
        let connection = master.and_then(|m| self.connection_to(&m));
        match connection {
            Some(connection) if !self.cluster.checks.is_empty() => {
                let events = self.events.clone();
                tokio::spawn(async move {
                    let answer = connection.request(PeerRequest::CheckSummaries, STATUS_FETCH_TIMEOUT).await;
                    let summaries = match answer {
                        Ok(PeerResponse::CheckSummaries { summaries }) => Some(summaries),
                        _ => None,
                    };
                    let _ = events.send(Event::Control(ControlEvent::StatusFetched { summaries, reply })).await;
                });
            }
            _ => {
                let _ = reply.send(ControlResponse::Status(self.status()));
            }
        }
    }

    /// `qu alert test`: a synthetic DOWN through one alert's sink.
    fn alert_test(&mut self, alert: String, reply: oneshot::Sender<ControlResponse>) {
        let Some(alert) = self.cluster.alerts.iter().find(|a| a.id == alert || a.name == alert).cloned() else {
            let message = format!("no alert has the name or id `{alert}` (see `qu alert list`)");
            let _ = reply.send(ControlResponse::Error { message });
            return;
        };
        let check = qu_core::config::Check {
            rounds_down: None,
            rounds_up: None,
            id: "test".into(),
            name: "qu-alert-test".into(),
            kind: "test".into(),
            target: format!("alert {}", alert.name),
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
            settings: BTreeMap::new(),
            alert_ids: vec![],
            suppress_alert_ids: vec![],
            disabled: false,
        };
        let detail = "a test event from `qu alert test`; nothing is wrong";
        let (master, at) = (self.me().to_string(), self.wall());
        let context = crate::alerts::context(
            &check,
            &alert,
            CheckState::Up,
            CheckState::Down,
            (0, 0, 0),
            detail,
            &master,
            at,
            "test",
            true,
        );
        self.send_tests(vec![(alert, context)], reply);
    }

    /// `qu check test`: a synthetic transition through a check's effective alerts.
    fn check_test(&mut self, check: String, state: String, reply: oneshot::Sender<ControlResponse>) {
        let Some(check) = self.cluster.check(&check).cloned() else {
            let message = format!("no check has the name or id `{check}` (see `qu check list`)");
            let _ = reply.send(ControlResponse::Error { message });
            return;
        };
        let (from, to) = match state.as_str() {
            "down" => (CheckState::Up, CheckState::Down),
            "up" => (CheckState::Unknown, CheckState::Up),
            "recovered" => (CheckState::Down, CheckState::Up),
            other => {
                let message = format!("--state {other}: expected down, up or recovered");
                let _ = reply.send(ControlResponse::Error { message });
                return;
            }
        };
        let alerts: Vec<qu_core::config::Alert> =
            qu_core::alerting::effective_alerts(&self.cluster, &check).into_iter().cloned().collect();
        if alerts.is_empty() {
            let message = format!(
                "check {} has no effective alerts (none attached or default, or all suppressed or disabled)",
                check.name
            );
            let _ = reply.send(ControlResponse::Error { message });
            return;
        }
        let detail = "a test transition from `qu check test`; the check's real state is unchanged";
        let (master, at) = (self.me().to_string(), self.wall());
        let sends = alerts
            .into_iter()
            .map(|alert| {
                let context =
                    crate::alerts::context(&check, &alert, from, to, (0, 0, 0), detail, &master, at, "test", true);
                (alert, context)
            })
            .collect();
        self.send_tests(sends, reply);
    }

    /// `qu node add`: the join handshake on a helper task, then the change.
    fn node_add(&mut self, addr: String, fingerprint: qu_core::Fingerprint, reply: oneshot::Sender<ControlResponse>) {
        if !self.core.is_member() {
            let message = "this node is not a member of a cluster; run `qu node add` on a member".into();
            let _ = reply.send(ControlResponse::Error { message });
        } else {
            let invite = join::Invite {
                endpoint: self.endpoint.clone(),
                events: self.events.clone(),
                secret: self.node.cluster_secret.clone(),
                cluster_yaml: self.cluster.membership().to_yaml(),
                addr,
                fingerprint,
            };
            join::invite(invite, reply);
        }
    }

    /// Like `submit_checked`, but a check of a plugin type is first shown to
    /// the plugin's `validate-config` on this node (off the event loop).
    pub(super) fn submit_validated(
        &mut self,
        mutation: Mutation,
        kind: &str,
        target: String,
        settings: BTreeMap<String, String>,
        reply: oneshot::Sender<ControlResponse>,
    ) {
        if qu_core::config::NATIVE_TYPES.contains(&kind) || !self.cluster.has_check_plugin(kind) {
            self.submit_checked(mutation, reply);
            return;
        }
        let (registry, events, kind) = (self.plugins.clone(), self.events.clone(), kind.to_string());
        tokio::spawn(async move {
            let plugin = match registry.get_ready(&kind, Duration::from_secs(30)).await {
                Ok(plugin) => plugin,
                Err(reason) => {
                    let message = format!("{REFUSED}plugin {kind} is not usable on this node: {reason}");
                    let _ = reply.send(ControlResponse::Error { message });
                    return;
                }
            };
            let settings: Vec<(String, String)> = settings.into_iter().collect();
            match registry.runtime().validate_check(&plugin, &settings, &target).await {
                Ok(()) => {
                    let _ = events.send(Event::Control(ControlEvent::SubmitChecked { mutation, reply })).await;
                }
                Err(error) => {
                    let message = match error {
                        qu_plugin::CallError::Plugin { plugin, error } => format!("{REFUSED}{plugin}: {error}"),
                        other => format!("{REFUSED}{other}"),
                    };
                    let _ = reply.send(ControlResponse::Error { message });
                }
            }
        });
    }

    /// `qu plugin add`: validate the component here, store it, ship it to
    /// the master, then commit its entry.
    pub(super) fn plugin_add(
        &mut self,
        name: String,
        path: std::path::PathBuf,
        allow: Vec<String>,
        memory_mib: Option<u32>,
        timeout: Option<Duration>,
        reply: oneshot::Sender<ControlResponse>,
    ) {
        let master = self.core.master().filter(|m| self.core.is_live(m) && *m != self.me());
        let master_link = master.and_then(|m| self.connection_to(&m));
        if master.is_some() && master_link.is_none() {
            let _ = reply.send(ControlResponse::Error { message: self.not_master_reason() });
            return;
        }
        let (registry, events) = (self.plugins.clone(), self.events.clone());
        tokio::spawn(async move {
            let fail = |message: String| ControlResponse::Error { message };
            let answer = async {
                let bytes = crate::plugins::read_component(&path)?;
                let limits = qu_core::config::PluginLimits { memory_mib, timeout };
                let entry_limits = crate::plugins::limits_of(&limits);
                let plugin = registry
                    .runtime()
                    .load(Some(&name), Arc::from(bytes.clone()), allow.clone(), entry_limits)
                    .await
                    .map_err(|e| format!("{REFUSED}{}: {e}", path.display()))?;
                let sha256 = registry.store_blob(&bytes).map_err(|e| format!("store the component: {e}"))?;
                if let Some(link) = master_link {
                    match link.request(PeerRequest::PluginPut { bytes }, Duration::from_secs(30)).await {
                        Ok(PeerResponse::PluginStored { sha256: stored }) if stored == sha256 => {}
                        Ok(PeerResponse::Refused { reason }) => {
                            return Err(format!("the master refused the component: {reason}"));
                        }
                        Ok(other) => return Err(format!("the master answered {other:?}")),
                        Err(error) => return Err(format!("ship the component to the master: {error}")),
                    }
                }
                let kind = match plugin.kind {
                    qu_plugin::Kind::Check => qu_core::config::PluginKind::Check,
                    qu_plugin::Kind::Sink => qu_core::config::PluginKind::Sink,
                };
                let size = plugin.size as u64;
                Ok(Mutation::AddPlugin {
                    plugin: qu_core::config::PluginEntry { name, kind, sha256, size, allow, limits },
                })
            }
            .await;
            match answer {
                Ok(mutation) => {
                    let _ = events.send(Event::Control(ControlEvent::SubmitChecked { mutation, reply })).await;
                }
                Err(message) => {
                    let _ = reply.send(fail(message));
                }
            }
        });
    }

    /// Checks a change against this node's config first, so bad input gets
    /// its error at once and nothing is sent; then proposes it.
    pub(super) fn submit_checked(&mut self, mutation: Mutation, reply: oneshot::Sender<ControlResponse>) {
        let stamp = Stamp { id: self.core.next_config_id(), at: self.wall(), by: self.me() };
        if let Err(reason) = mutation.apply(&self.cluster, &stamp) {
            let _ = reply.send(ControlResponse::Error { message: format!("{REFUSED}{reason}") });
            return;
        }
        self.submit(mutation, Waiter::Control(reply));
    }

    /// Validates an alert's templates and, with its sink plugin (off the
    /// event loop), its settings; then proposes the change.
    pub(super) fn submit_alert(
        &mut self,
        mutation: Mutation,
        alert: qu_core::config::Alert,
        reply: oneshot::Sender<ControlResponse>,
    ) {
        let templates =
            crate::alerts::validate_templates(alert.subject_template.as_deref(), alert.body_template.as_deref());
        if let Err(problem) = templates {
            let _ = reply.send(ControlResponse::Error { message: format!("{REFUSED}{problem}") });
            return;
        }
        if !self.cluster.has_sink_plugin(&alert.kind) {
            // The config's own validation words the refusal.
            self.submit_checked(mutation, reply);
            return;
        }
        let (registry, events) = (self.plugins.clone(), self.events.clone());
        tokio::spawn(async move {
            let plugin = match registry.get_ready(&alert.kind, Duration::from_secs(30)).await {
                Ok(plugin) => plugin,
                Err(reason) => {
                    let message = format!("{REFUSED}sink {} is not usable on this node: {reason}", alert.kind);
                    let _ = reply.send(ControlResponse::Error { message });
                    return;
                }
            };
            let settings: Vec<(String, String)> = alert.config.clone().into_iter().collect();
            let message = match registry.runtime().validate_sink(&plugin, &settings).await {
                Ok(()) => {
                    let _ = events.send(Event::Control(ControlEvent::SubmitChecked { mutation, reply })).await;
                    return;
                }
                Err(qu_plugin::CallError::Plugin { plugin, error }) => format!("{REFUSED}{plugin}: {error}"),
                Err(other) => format!("{REFUSED}{other}"),
            };
            let _ = reply.send(ControlResponse::Error { message });
        });
    }

    /// Sends synthetic test events through real sinks from this node (no
    /// quorum needed, nothing committed).
    pub(super) fn send_tests(
        &self,
        sends: Vec<(qu_core::config::Alert, crate::alerts::Context)>,
        reply: oneshot::Sender<ControlResponse>,
    ) {
        let registry = self.plugins.clone();
        let at = self.wall();
        tokio::spawn(async move {
            let mut results = Vec::new();
            for (alert, mut context) in sends {
                context.transition = format!("test-{}", at.unix_millis());
                let key = format!("{}/{}", context.transition, alert.id);
                let (event, template_error) = crate::alerts::event(&context, &alert, &key, at);
                let started = std::time::Instant::now();
                let sent = match registry.get_ready(&alert.kind, Duration::from_secs(30)).await {
                    Ok(plugin) => {
                        let settings: Vec<(String, String)> = alert.config.clone().into_iter().collect();
                        registry.runtime().send(&plugin, &event, &settings).await.map_err(|e| e.to_string())
                    }
                    Err(reason) => Err(format!("sink {} is not usable on this node: {reason}", alert.kind)),
                };
                let ok = sent.is_ok();
                let mut error = sent.err().unwrap_or_default();
                if let Some(problem) = template_error {
                    let note = format!("the default rendering was used: {problem}");
                    error = if error.is_empty() { note } else { format!("{error}; {note}") };
                }
                if ok {
                    tracing::info!(alert = %alert.name, "alert {}: test event delivered", alert.name);
                } else {
                    tracing::warn!(alert = %alert.name, "alert {}: test event not delivered: {error}", alert.name);
                }
                results.push(crate::control::TestResult {
                    alert: alert.name.clone(),
                    ok,
                    error,
                    millis: started.elapsed().as_millis() as u64,
                });
            }
            let _ = reply.send(ControlResponse::Tested { results });
        });
    }
}

/// `reply`, with the id of what the change creates added to a commit's
/// answer (the id is drawn here, before the change is proposed or
/// forwarded).
fn naming_created(id: String, reply: oneshot::Sender<ControlResponse>) -> oneshot::Sender<ControlResponse> {
    let (named, answer) = oneshot::channel();
    tokio::spawn(async move {
        if let Ok(mut answer) = answer.await {
            if let ControlResponse::Committed { created, .. } = &mut answer {
                *created = Some(id);
            }
            let _ = reply.send(answer);
        }
    });
    named
}
