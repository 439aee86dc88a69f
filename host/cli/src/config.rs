//! `qu config validate [FILE]`: the offline check of `cluster.yaml` and
//! `node.yaml` that the daemon does at start, without a daemon: every
//! problem, one per line.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use qu_core::config::{ClusterConfig, NodeConfig};

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Check cluster.yaml and node.yaml (of the data directory, or FILE) offline: every problem, one per line; exit 0 when valid, 1 when not.
    Validate {
        /// A file to check instead: read as node.yaml if it is named so, as cluster.yaml otherwise.
        file: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// One file's verdict.
#[derive(Debug, serde::Serialize)]
struct Checked {
    path: String,
    kind: &'static str,
    valid: bool,
    problems: Vec<String>,
    /// What a valid file holds, in a few words.
    #[serde(skip_serializing_if = "Option::is_none")]
    summary: Option<String>,
}

pub fn run(command: ConfigCommand) -> anyhow::Result<()> {
    let ConfigCommand::Validate { file, json } = command;
    let files: Vec<PathBuf> = match file {
        Some(file) => vec![file],
        None => {
            let data = crate::paths()?.data;
            vec![data.cluster_yaml(), data.node_yaml()]
        }
    };
    let checked: Vec<Checked> = files.iter().map(|f| check(f)).collect();
    let invalid = checked.iter().filter(|c| !c.valid).count();
    if json {
        crate::print_json(&serde_json::json!({ "valid": invalid == 0, "files": checked }))?;
    } else {
        for c in &checked {
            match &c.summary {
                Some(summary) if c.valid => println!("{}: valid ({summary})", c.path),
                _ => c.problems.iter().for_each(|p| println!("{}: {p}", c.path)),
            }
        }
    }
    if invalid > 0 {
        let problems: usize = checked.iter().map(|c| c.problems.len()).sum();
        anyhow::bail!("{problems} problem(s) in {invalid} file(s); nothing was changed");
    }
    Ok(())
}

fn check(path: &Path) -> Checked {
    let shown = path.display().to_string();
    let is_node = path.file_name().is_some_and(|n| n == "node.yaml");
    let kind = if is_node { "node.yaml" } else { "cluster.yaml" };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            return Checked {
                path: shown,
                kind,
                valid: false,
                problems: vec![format!("cannot read: {e}")],
                summary: None,
            };
        }
    };
    let parsed = if is_node {
        NodeConfig::parse(&text).map(|n| format!("node {}, advertises {}", n.node_id, n.advertise))
    } else {
        ClusterConfig::parse(&text).map(|c| {
            format!(
                "version {}, {} peers, {} checks, {} alerts, {} plugins",
                c.version,
                c.peers.len(),
                c.checks.len(),
                c.alerts.len(),
                c.plugins.len()
            )
        })
    };
    match parsed {
        Ok(summary) => Checked { path: shown, kind, valid: true, problems: Vec::new(), summary: Some(summary) },
        Err(error) => Checked { path: shown, kind, valid: false, problems: error.problems, summary: None },
    }
}
