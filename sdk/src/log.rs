//! Logging into the host's log: `qu_sdk::info!("resolved {name}")`.

use crate::__bindings::log as wit;

#[doc(hidden)]
pub fn write(level: u8, message: String) {
    let level = match level {
        0 => wit::Level::Trace,
        1 => wit::Level::Debug,
        2 => wit::Level::Info,
        3 => wit::Level::Warn,
        _ => wit::Level::Error,
    };
    wit::log(level, &message);
}

/// Logs at debug level into the host's log.
#[macro_export]
macro_rules! debug { ($($arg:tt)*) => { $crate::log::write(1, ::std::format!($($arg)*)) }; }
/// Logs at info level into the host's log.
#[macro_export]
macro_rules! info { ($($arg:tt)*) => { $crate::log::write(2, ::std::format!($($arg)*)) }; }
/// Logs at warn level into the host's log.
#[macro_export]
macro_rules! warn { ($($arg:tt)*) => { $crate::log::write(3, ::std::format!($($arg)*)) }; }
/// Logs at error level into the host's log.
#[macro_export]
macro_rules! error { ($($arg:tt)*) => { $crate::log::write(4, ::std::format!($($arg)*)) }; }
