//! Example check plugin for authors (see docs/plugins.md): GETs TARGET (an
//! http:// or https:// URL), parses the body as JSON and is UP when the
//! field at `field` (a dotted path such as `status` or `checks.db`) equals
//! `expect`.

use std::time::Duration;

use qu_sdk::{Check, Config, Error, Info, Outcome};

struct HttpJson;

impl Check for HttpJson {
    fn info() -> Info {
        Info::new("http-json", env!("CARGO_PKG_VERSION"), "a JSON field of an HTTP response has the expected value")
            .target("an http:// or https:// URL")
            .required("field", "dotted path of the field, e.g. status or checks.db")
            .required("expect", "the value the field must have, e.g. ok or true")
            .optional("timeout", Some("5s"), "request timeout")
    }

    fn validate(config: &Config, target: &str) -> Result<(), Error> {
        if !(target.starts_with("http://") || target.starts_with("https://")) {
            return Err(Error::config(format!("target `{target}`: expected an http:// or https:// URL")));
        }
        let field: String = config.required("field")?;
        if field.is_empty() || field.split('.').any(str::is_empty) {
            return Err(Error::config("setting `field`: expected a dotted path such as checks.db"));
        }
        config.get_or("timeout", Duration::from_secs(5))?;
        Ok(())
    }

    fn check(config: &Config, target: &str) -> Result<Outcome, Error> {
        let field: String = config.required("field")?;
        let expect: String = config.required("expect")?;
        let timeout = config.get_or("timeout", Duration::from_secs(5))?;

        let response = qu_sdk::http::get(target).header("accept", "application/json").timeout(timeout).send()?;
        if !(200..300).contains(&response.status) {
            return Ok(Outcome::down(format!("status {}", response.status)));
        }
        let json: serde_json::Value = match serde_json::from_slice(&response.body) {
            Ok(json) => json,
            Err(e) => return Ok(Outcome::down(format!("body is not JSON: {e}"))),
        };
        let mut value = &json;
        for key in field.split('.') {
            match value.get(key) {
                Some(inner) => value = inner,
                None => return Ok(Outcome::down(format!("no field `{field}` in the response"))),
            }
        }
        let actual = match value {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if actual == expect {
            Ok(Outcome::up(format!("{field} = {actual}")))
        } else {
            Ok(Outcome::down(format!("{field} = {actual}, expected {expect}")))
        }
    }
}

qu_sdk::export_check!(HttpJson);
