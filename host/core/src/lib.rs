//! Pure (sans-IO) cores of qu.
//!
//! Everything here is a deterministic function of its inputs: no sockets,
//! files, clock reads or ambient randomness (enforced by `.clippy.toml` in
//! this crate). The daemon feeds these functions and executes what they
//! return; the simulator drives the same code.

pub mod alerting;
pub mod config;
pub mod consensus;
pub mod ids;
pub mod join;
pub mod limits;
pub mod monitor;
pub mod wire;

pub use ids::{Fingerprint, NodeId};
