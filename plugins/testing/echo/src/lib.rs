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

#[cfg(test)]
mod tests {
    use super::*;
    use qu_sdk::Status;

    #[test]
    fn answers_with_the_message_or_the_target() {
        // (message setting, target, status, message answered)
        let cases: &[(Option<&str>, &str, Status, &str)] = &[
            (None, "hello", Status::Up, "hello"),
            (None, "", Status::Up, ""),
            (Some("fine"), "hello", Status::Up, "fine"),
            (None, "down", Status::Down, "down"),
            (Some("it broke"), "down", Status::Down, "it broke"),
            // Only the exact word fails the probe.
            (None, "DOWN", Status::Up, "DOWN"),
            (None, "down ", Status::Up, "down "),
        ];
        for &(message, target, status, answer) in cases {
            let config = Config::from_pairs(&message.map(|m| vec![("message", m)]).unwrap_or_default());
            let outcome = Echo::check(&config, target).unwrap();
            assert_eq!(
                (outcome.status, outcome.message.as_str()),
                (status, answer),
                "message {message:?}, target {target:?}"
            );
            assert_eq!((outcome.latency, outcome.metrics.len()), (None, 0));
        }
    }

    #[test]
    fn declares_its_one_optional_setting() {
        let info = Echo::info();
        assert_eq!(info.name, "echo");
        let fields: Vec<(&str, bool, Option<&str>)> =
            info.fields.iter().map(|f| (f.name.as_str(), f.required, f.default.as_deref())).collect();
        assert_eq!(fields, [("message", false, None)]);
        assert_eq!(Echo::validate(&Config::from_pairs(&[("message", "x")]), "anything"), Ok(()));
    }
}
