//! Text and JSON renderings of daemon answers (shapes fixed by CLI.md).

use std::fmt::Write;
use std::path::Path;

use qu_daemon::init::InitReport;
use qu_daemon::status::{PeerView, StatusView};

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

pub fn init_json(report: &InitReport, dir: &Path) -> String {
    serde_json::json!({
        "node_id": report.node_id,
        "fingerprint": report.fingerprint.as_str(),
        "data_dir": crate::data_dir_display(dir),
        "advertise": report.advertise,
        "bind": report.bind.to_string(),
        "port": report.port,
        "cluster_secret": report.generated_secret,
    })
    .to_string()
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
        let alerts = if check.alerts.is_empty() { "-".to_string() } else { check.alerts.join(",") };
        checks.push(row([
            &check.id,
            &check.name,
            &check.kind,
            &check.state,
            &format!("{}/{}", check.ok, check.total),
            &alerts,
            &check.detail,
        ]));
    }
    out.push_str(&table(&checks));
    out
}

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

/// Left-aligned columns separated by two spaces; the last column unpadded.
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
