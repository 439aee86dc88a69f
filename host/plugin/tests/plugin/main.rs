//! The plugin host against real components built from `plugins/`: one
//! test binary (each links wasmtime, so one link instead of four).
//!
//! - `builtin` — the built-in `dns` and `tls` checks against real servers.
//! - `compat`  — a component built against 0.1.0 still runs.
//! - `sandbox` — a hostile plugin: time, memory, files, environment, network.
//! - `sinks`   — the webhook, discord and email sinks against real servers.

mod builtin;
mod compat;
mod sandbox;
mod sinks;
