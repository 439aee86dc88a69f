//! The qu daemon: loads and checks a node's files, runs the peer listener and
//! the control socket, and drives the cores from one event loop.
//!
//! Entry points: [`init::init`] (`qu init`), [`serve::serve`] (`qu serve`),
//! and [`run`], which takes already-bound listeners and a shutdown future so
//! tests run nodes in-process on port 0.

pub mod alerts;
pub mod control;
mod daemon;
mod http;
pub mod init;
pub mod load;
pub mod metrics;
pub mod notify;
pub mod pake;
pub mod paths;
mod peer;
pub mod plugins;
mod scheduler;
pub mod serve;
pub mod status;

pub use daemon::{Listeners, run};
pub use load::{LoadError, LoadedNode};
pub use paths::Paths;

/// The version of this build, as `qu version` prints it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
