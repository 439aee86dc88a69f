//! End-to-end tests: the built `qu` binary, real processes, real TLS on
//! loopback. One test binary; each module covers one part:
//!
//! - `init`    — `qu init`: files, modes, secrets, refusals.
//! - `serve`   — `qu serve` + `qu status`: startup, refusals, signals, restarts.
//! - `checks`  — checks on 3 nodes: verdicts everywhere, state through a failover.
//! - `control` — the control socket: modes, stale sockets, other uids.
//! - `peers`   — the peer listener as a stranger sees it: only the join handshake.
//! - `inproc`  — the daemon library run in-process on port 0.
//! - `cluster` — 3-node clusters: formation, failover, stale masters, quorum loss,
//!   the preferred master's return, removal, hand edits.
//! - `recovery` — the seed's procedures: restore with version 0, whole-cluster restore,
//!   shrink, replace, long absence, rolling restart.
//! - `cluster_alerts` — alerts about the cluster itself: no quorum, a member dead, the dead man's switch.
//! - `alerts`  — alerts through the webhook sink on 3 nodes: once per incident through failovers.
//! - `delivery` — delivery under faults: committed-only, in order through an outage, clock steps.
//! - `operator` — an operator's hands: stale write-backs, bumped versions, edits while stopped,
//!   version-0 restores, unknown outcomes (exit code 3).
//! - `plugins` — WebAssembly plugins on 3 nodes: add, replicate, verify, run, contain.
//! - `upgrade` — a data directory written by qu 0.1 (a committed fixture), started by this binary.
//! - `metrics` — `/metrics` on 3 nodes: promtool accepts it, a real Prometheus scrapes it.
//! - `sinks`   — the built-in sinks for third-party services against stand-ins that behave like them.
//! - `reminders` — repeat reminders once per slot through a master kill; `qu alert ack` stops them.
//! - `demo`    — the README's main-job command.

mod alerts;
mod checks;
mod cluster;
mod cluster_alerts;
mod control;
mod delivery;
mod demo;
mod init;
mod inproc;
mod metrics;
mod operator;
mod peers;
mod plugins;
mod recovery;
mod reminders;
mod serve;
mod sinks;
mod upgrade;
