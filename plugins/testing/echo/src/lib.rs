//! Answers without IO: `up` with the target echoed, or `down` when the
//! target is `down`. Used for the no-IO call-overhead benchmark and as the
//! recorded 0.1.0 compatibility fixture.

use qu_sdk::{Check, Config, Error, Info, Outcome};

struct Echo;

impl Check for Echo {
    fn info() -> Info {
        Info::new("echo", env!("CARGO_PKG_VERSION"), "answers without any IO")
            .target("any text; `down` makes the probe fail")
            .optional("message", None, "text to answer with instead of the target")
    }

    fn check(config: &Config, target: &str) -> Result<Outcome, Error> {
        let message = config.optional::<String>("message")?.unwrap_or_else(|| target.to_string());
        Ok(if target == "down" { Outcome::down(message) } else { Outcome::up(message) })
    }
}

qu_sdk::export_check!(Echo);
