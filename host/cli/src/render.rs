//! Text and JSON renderings of daemon answers (shapes fixed by CLI.md).

use std::fmt::Write;
use std::path::Path;

use qu_daemon::init::InitReport;
use qu_daemon::status::{PeerView, SettingsView, StatusView};

pub fn init_text(report: &InitReport, dir: &Path) -> String {
    let mut out = String::new();
    let dir = crate::data_dir_display(dir);
    let _ = writeln!(out, "initialised node {} in {}", report.node_id, dir.display());
    let _ = writeln!(out, "fingerprint  {}", report.fingerprint);
    let _ = writeln!(out, "advertise    {} (listening on {}:{})", report.advertise, report.bind, report.port);
    match &report.generated_secret {
        Some(secret) => {
            let _ =
                writeln!(out, "\ncluster secret (shown once; also stored in node.yaml, keep a copy somewhere safe):");
            let _ = writeln!(out, "  {secret}");
            let _ = writeln!(out, "\nTo add another node, run on the new host:");
            let _ = writeln!(out, "  qu init --advertise HOST:PORT --secret '{secret}' && qu serve");
            let _ = writeln!(out, "then, on this node: qu node add HOST:PORT");
        }
        None => {
            let _ = writeln!(
                out,
                "\nStart the daemon with `qu serve`, then on a member run: qu node add {}",
                report.advertise
            );
        }
    }
    let _ = writeln!(out, "Start this node with: qu serve   (or: systemctl start quptime)");
    out
}

pub fn init_json(report: &InitReport, dir: &Path) -> serde_json::Value {
    serde_json::json!({
        "node_id": report.node_id,
        "fingerprint": report.fingerprint.as_str(),
        "data_dir": crate::data_dir_display(dir),
        "advertise": report.advertise,
        "bind": report.bind.to_string(),
        "port": report.port,
        "cluster_secret": report.generated_secret,
    })
}

/// The PEERS table with its legend (also `qu node list`).
pub fn peers_text(peers: &[PeerView]) -> String {
    let mut rows = vec![row(["", "NODE_ID", "ADVERTISE", "LIVE", "LAST_SEEN"])];
    for peer in peers {
        rows.push(row([
            if peer.this_node { "*" } else { "" },
            &peer.node_id.to_string(),
            &peer.advertise,
            if peer.live { "true" } else { "false" },
            peer.last_seen.as_deref().unwrap_or("-"),
        ]));
    }
    let mut out = table(&rows);
    out.push_str("(* = this node)\n");
    out
}

pub fn status_text(view: &StatusView) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "node       {}", view.node_id);
    let _ = writeln!(out, "term       {}", view.term);
    match &view.master {
        Some(master) => {
            let _ = writeln!(out, "master     {master}");
        }
        None => {
            let _ = writeln!(out, "master     (none — no quorum or election in progress)");
        }
    }
    let _ = writeln!(out, "quorum     {} (need {})", view.quorum, view.quorum_size);
    let _ = writeln!(out, "config ver {}", view.config_version);
    let _ = writeln!(out);
    let _ = writeln!(out, "PEERS");
    out.push_str(&peers_text(&view.peers));
    let _ = writeln!(out);
    let _ = writeln!(out, "CHECKS");
    let mut checks = vec![row(["ID", "NAME", "TYPE", "STATE", "OK/TOTAL", "ALERTS", "DETAIL"])];
    for check in &view.checks {
        // Default alerts are marked `*` (in text only: JSON lists them apart).
        let marked: Vec<String> = check
            .alerts
            .iter()
            .map(|a| if check.default_alerts.contains(a) { format!("{a}*") } else { a.clone() })
            .collect();
        let alerts = if marked.is_empty() { "-".to_string() } else { marked.join(",") };
        checks.push(row([
            &check.id,
            &check.name,
            &check.kind,
            &check.state,
            &format!("{}/{}", check.ok, check.total),
            &alerts,
            &match &check.acked {
                Some(ack) if ack.reason.is_empty() => format!("{} (acked {})", check.detail, ack.at),
                Some(ack) => format!("{} (acked {}: {})", check.detail, ack.at, ack.reason),
                None => check.detail.clone(),
            },
        ]));
    }
    out.push_str(&table(&checks));
    out
}

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

/// Left-aligned columns separated by two spaces; the last column unpadded.
/// `qu cluster settings`: one key and its value a line, the values in one
/// column.
pub fn settings_text(view: &SettingsView) -> String {
    let rows: Vec<Vec<String>> = [
        ("heartbeat", view.heartbeat.clone()),
        ("dead_after", view.dead_after.clone()),
        ("master_cooldown", view.master_cooldown.clone()),
        ("hysteresis", view.hysteresis.to_string()),
        ("announce_first_up", view.announce_first_up.to_string()),
        ("delivery_deadline", view.delivery_deadline.clone()),
        ("plugin_memory_mib", view.plugin_memory_mib.to_string()),
        ("no_quorum_after", view.no_quorum_after.clone()),
        ("member_dead_after", view.member_dead_after.clone()),
        ("deadman_url", if view.deadman_url.is_empty() { "(off)".to_string() } else { view.deadman_url.clone() }),
        ("deadman_interval", view.deadman_interval.clone()),
    ]
    .into_iter()
    .map(|(key, value)| vec![key.to_string(), value])
    .collect();
    table(&rows)
}

pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| rows.iter().filter_map(|r| r.get(i)).map(|c| c.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_settings_values_line_up_and_every_settable_key_is_shown() {
        let view = SettingsView {
            heartbeat: "1s".into(),
            heartbeat_secs: 1.0,
            dead_after: "5s".into(),
            dead_after_secs: 5.0,
            master_cooldown: "2m".into(),
            master_cooldown_secs: 120.0,
            hysteresis: 2,
            announce_first_up: true,
            delivery_deadline: "1h".into(),
            delivery_deadline_secs: 3600.0,
            plugin_memory_mib: 512,
            no_quorum_after: "18s (default: 2 × dead_after + 10s)".into(),
            no_quorum_after_secs: 18.0,
            member_dead_after: "1m".into(),
            member_dead_after_secs: 60.0,
            deadman_url: String::new(),
            deadman_interval: "1m".into(),
            deadman_interval_secs: 60.0,
            config_version: 9,
        };
        let text = settings_text(&view);
        let columns: Vec<usize> = text
            .lines()
            .map(|line| {
                let key_end = line.find(' ').unwrap();
                key_end + line[key_end..].find(|c: char| c != ' ').unwrap()
            })
            .collect();
        assert!(columns.windows(2).all(|w| w[0] == w[1]), "values start in one column:\n{text}");
        for key in qu_core::config::SETTING_KEYS {
            assert!(text.lines().any(|l| l.starts_with(&format!("{key} "))), "{key} missing:\n{text}");
        }
    }
}
