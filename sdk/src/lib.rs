//! The qu plugin SDK: write an extra check type or an alert sink as a
//! WebAssembly component for qu (contract `qu:plugin@0.2.0`, see `wit/`).
//!
//! A plugin is one type implementing [`Check`] or [`Sink`] plus one macro
//! (compiled as a doctest in the `check` build):
//!
#![cfg_attr(feature = "check", doc = "```no_run")]
#![cfg_attr(not(feature = "check"), doc = "```text")]
//! use qu_sdk::{Check, Config, Error, Info, Outcome};
//!
//! struct Hello;
//!
//! impl Check for Hello {
//!     fn info() -> Info {
//!         Info::new("hello", env!("CARGO_PKG_VERSION"), "says hello").target("anything")
//!     }
//!     fn check(config: &Config, target: &str) -> Result<Outcome, Error> {
//!         Ok(Outcome::up(format!("hello {target}")))
//!     }
//! }
//!
//! qu_sdk::export_check!(Hello);
//! ```
//!
//! Build with `cargo build --target wasm32-wasip2 --release`; the file in
//! `target/wasm32-wasip2/release/` is the component. Enable the SDK's
//! `check` feature for a check plugin or `sink` for a sink (one of them).
//!
//! Inside the sandbox a plugin has no files, no environment and no stdio;
//! it reaches the network only through [`http`] (and, for sinks, [`tcp`]),
//! and only towards destinations its check or alert names or its allow
//! list grants. See `docs/plugins.md`.

#[cfg(all(feature = "check", feature = "sink"))]
compile_error!("qu-sdk: enable either the `check` or the `sink` feature, not both (one plugin, one world)");
#[cfg(not(any(feature = "check", feature = "sink")))]
compile_error!("qu-sdk: enable the `check` feature (a check plugin) or the `sink` feature (an alert sink)");

mod config;
mod error;
pub mod http;
mod info;
#[doc(hidden)]
pub mod log;

#[doc(hidden)]
pub use config::fuzz_config as __fuzz_config;
pub use config::{Config, FromValue};
pub use error::Error;
pub use info::{Destination, Field, Info};

#[cfg(feature = "check")]
mod check;
#[cfg(feature = "check")]
pub use check::{Check, Metric, Outcome, Status};
#[cfg(feature = "check")]
pub mod system;
#[cfg(feature = "check")]
pub mod tls;

#[cfg(feature = "sink")]
mod sink;
#[cfg(feature = "sink")]
pub use sink::{Event, Sink};
#[cfg(feature = "sink")]
pub mod deliver;
#[cfg(feature = "sink")]
pub mod tcp;

/// Generated bindings of the `checker` world (used by [`export_check!`]).
#[cfg(feature = "check")]
#[doc(hidden)]
pub mod __checker {
    wit_bindgen::generate!({
        path: "../wit/0.2.0",
        world: "qu:plugin/checker",
        pub_export_macro: true,
        export_macro_name: "__export_checker",
        default_bindings_module: "qu_sdk::__checker",
    });
    pub use self::qu::plugin::{log, system, tls_inspect, types};
}

/// Generated bindings of the `sink` world (used by [`export_sink!`]).
#[cfg(feature = "sink")]
#[doc(hidden)]
pub mod __sink {
    wit_bindgen::generate!({
        path: "../wit/0.2.0",
        world: "qu:plugin/sink",
        pub_export_macro: true,
        export_macro_name: "__export_sink",
        default_bindings_module: "qu_sdk::__sink",
    });
    pub use self::qu::plugin::{log, tcp, types};
}

#[cfg(feature = "check")]
#[doc(hidden)]
pub use __checker as __bindings;
#[cfg(feature = "sink")]
#[doc(hidden)]
pub use __sink as __bindings;

/// Exports a [`Check`] implementation as the plugin's `probe` interface.
#[cfg(feature = "check")]
#[macro_export]
macro_rules! export_check {
    ($plugin:ty) => {
        const _: () = {
            struct __QuProbe;
            impl $crate::__checker::exports::qu::plugin::probe::Guest for __QuProbe {
                fn info() -> $crate::__checker::types::PluginInfo {
                    $crate::__rt::check_info::<$plugin>()
                }
                fn validate_config(
                    config: $crate::__checker::types::Config,
                    target: ::std::string::String,
                ) -> ::core::result::Result<(), $crate::__checker::types::PluginError> {
                    $crate::__rt::check_validate::<$plugin>(config, target)
                }
                fn check(
                    config: $crate::__checker::types::Config,
                    target: ::std::string::String,
                ) -> ::core::result::Result<
                    $crate::__checker::types::ProbeOutcome,
                    $crate::__checker::types::PluginError,
                > {
                    $crate::__rt::check_run::<$plugin>(config, target)
                }
            }
            $crate::__checker::__export_checker!(__QuProbe with_types_in $crate::__checker);
        };
    };
}

/// Exports a [`Sink`] implementation as the plugin's `notify` interface.
#[cfg(feature = "sink")]
#[macro_export]
macro_rules! export_sink {
    ($plugin:ty) => {
        const _: () = {
            struct __QuNotify;
            impl $crate::__sink::exports::qu::plugin::notify::Guest for __QuNotify {
                fn info() -> $crate::__sink::types::PluginInfo {
                    $crate::__rt::sink_info::<$plugin>()
                }
                fn validate_config(
                    config: $crate::__sink::types::Config,
                ) -> ::core::result::Result<(), $crate::__sink::types::PluginError> {
                    $crate::__rt::sink_validate::<$plugin>(config)
                }
                fn send(
                    event: $crate::__sink::types::AlertEvent,
                    config: $crate::__sink::types::Config,
                ) -> ::core::result::Result<(), $crate::__sink::types::PluginError> {
                    $crate::__rt::sink_send::<$plugin>(event, config)
                }
            }
    $crate::__sink::__export_sink!(__QuNotify with_types_in $crate::__sink);
        };
    };
}

/// Glue between the generated bindings and the SDK's types.
#[doc(hidden)]
pub mod __rt {
    use crate::__bindings::types as wit;
    use crate::{Config, Error, Info};

    pub(crate) fn info_to_wit(info: Info) -> wit::PluginInfo {
        wit::PluginInfo {
            name: info.name,
            version: info.version,
            description: info.description,
            target: info.target,
            config: info
                .fields
                .into_iter()
                .map(|f| wit::ConfigField {
                    name: f.name,
                    required: f.required,
                    default_value: f.default,
                    description: f.description,
                    destination: f.destination.map(|d| match d {
                        crate::Destination::Url => wit::Destination::Url,
                        crate::Destination::Address { default_port } => wit::Destination::Address(default_port),
                        crate::Destination::Host { port_setting, defaults } => {
                            wit::Destination::Host(wit::PortSetting { setting: port_setting, defaults })
                        }
                    }),
                })
                .collect(),
        }
    }

    pub(crate) fn error_to_wit(error: Error) -> wit::PluginError {
        match error {
            Error::Config(message) => wit::PluginError::Config(message),
            Error::Transient { message, retry_after } => wit::PluginError::Transient(wit::Retry {
                message,
                after_ms: retry_after.map(|d| d.as_millis().min(u64::MAX as u128) as u64),
            }),
            Error::Permanent(message) => wit::PluginError::Permanent(message),
        }
    }

    /// Checks the keys of `config` against what `info` declares: no
    /// unknown keys, every required key present.
    pub(crate) fn check_keys(info: &Info, config: &Config) -> Result<(), Error> {
        for (key, _) in config.pairs() {
            if !info.fields.iter().any(|f| f.name == *key) {
                let known: Vec<&str> = info.fields.iter().map(|f| f.name.as_str()).collect();
                return Err(Error::Config(if known.is_empty() {
                    format!("unknown setting `{key}`: {} takes no settings", info.name)
                } else {
                    format!("unknown setting `{key}` (known: {})", known.join(", "))
                }));
            }
        }
        for field in info.fields.iter().filter(|f| f.required) {
            if config.get(&field.name).is_none() {
                return Err(Error::Config(format!("missing setting `{}`: {}", field.name, field.description)));
            }
        }
        Ok(())
    }

    #[cfg(feature = "check")]
    pub use self::checks::*;
    #[cfg(feature = "check")]
    mod checks {
        use super::*;
        use crate::Check;

        pub fn check_info<T: Check>() -> wit::PluginInfo {
            info_to_wit(T::info())
        }

        pub fn check_validate<T: Check>(config: wit::Config, target: String) -> Result<(), wit::PluginError> {
            let config = Config::new(config);
            check_keys(&T::info(), &config)
                .and_then(|()| T::validate(&config, &target))
                .map_err(|e| error_to_wit(e.into_config()))
        }

        pub fn check_run<T: Check>(config: wit::Config, target: String) -> Result<wit::ProbeOutcome, wit::PluginError> {
            let config = Config::new(config);
            let started = std::time::Instant::now();
            match T::check(&config, &target) {
                Ok(outcome) => Ok(outcome.into_wit(started.elapsed())),
                Err(error) => Err(error_to_wit(error)),
            }
        }
    }

    #[cfg(feature = "sink")]
    pub use self::sinks::*;
    #[cfg(feature = "sink")]
    mod sinks {
        use super::*;
        use crate::{Event, Sink};

        pub fn sink_info<T: Sink>() -> wit::PluginInfo {
            info_to_wit(T::info())
        }

        pub fn sink_validate<T: Sink>(config: wit::Config) -> Result<(), wit::PluginError> {
            let config = Config::new(config);
            check_keys(&T::info(), &config)
                .and_then(|()| T::validate(&config))
                .map_err(|e| error_to_wit(e.into_config()))
        }

        pub fn sink_send<T: Sink>(event: wit::AlertEvent, config: wit::Config) -> Result<(), wit::PluginError> {
            let config = Config::new(config);
            T::send(&Event::from_wit(event), &config).map_err(error_to_wit)
        }
    }
}
