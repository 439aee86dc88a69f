//! Example check plugin for authors (see docs/plugins.md): GETs TARGET (an
//! http:// or https:// URL), parses the body as JSON and is UP when the
//! field at `field` (a dotted path such as `status` or `checks.db`) equals
//! `expect`. A field that is not a string is compared as its JSON text
//! (`true`, `3`, `1.5`, `null`).

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
        check_target(target)?;
        settings(config)?;
        Ok(())
    }

    fn check(config: &Config, target: &str) -> Result<Outcome, Error> {
        let settings = settings(config)?;
        let response =
            qu_sdk::http::get(target).header("accept", "application/json").timeout(settings.timeout).send()?;
        Ok(judge(&settings, response.status, &response.body))
    }
}

qu_sdk::export_check!(HttpJson);

/// The settings, parsed once for `validate` and `check`.
struct Settings {
    field: String,
    expect: String,
    timeout: Duration,
}

fn settings(config: &Config) -> Result<Settings, Error> {
    let field: String = config.required("field")?;
    if field.is_empty() || field.split('.').any(str::is_empty) {
        return Err(Error::config("setting `field`: expected a dotted path such as checks.db"));
    }
    let timeout = config.get_or("timeout", Duration::from_secs(5))?;
    if timeout.is_zero() {
        return Err(Error::config("setting `timeout`: must be more than 0"));
    }
    Ok(Settings { field, expect: config.required("expect")?, timeout })
}

fn check_target(target: &str) -> Result<(), Error> {
    if target.starts_with("http://") || target.starts_with("https://") {
        Ok(())
    } else {
        Err(Error::config(format!("target `{target}`: expected an http:// or https:// URL")))
    }
}

/// The verdict on one response: its status, then the field at the dotted
/// path, compared with `expect`.
fn judge(settings: &Settings, status: u16, body: &[u8]) -> Outcome {
    let field = &settings.field;
    if !(200..300).contains(&status) {
        return Outcome::down(format!("status {status}"));
    }
    let json: serde_json::Value = match serde_json::from_slice(body) {
        Ok(json) => json,
        Err(e) => return Outcome::down(format!("body is not JSON: {e}")),
    };
    let Some(value) = field.split('.').try_fold(&json, |value, key| value.get(key)) else {
        return Outcome::down(format!("no field `{field}` in the response"));
    };
    let actual = match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if actual == settings.expect {
        Outcome::up(format!("{field} = {actual}"))
    } else {
        Outcome::down(format!("{field} = {actual}, expected {}", settings.expect))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qu_sdk::{FromValue, Status};

    fn expecting(field: &str, expect: &str) -> Settings {
        settings(&Config::from_pairs(&[("field", field), ("expect", expect)])).unwrap()
    }

    const HEALTH: &str = r#"{"status":"ok","checks":{"db":true,"queue":{"depth":3,"lag":1.5,"name":"jobs"}},
        "version":null,"nodes":[1,2],"quoted":"true"}"#;

    #[test]
    fn fields_are_found_by_dotted_path_and_compared_as_text() {
        // (field, expect, status, message)
        let cases = [
            ("status", "ok", Status::Up, "status = ok"),
            ("status", "OK", Status::Down, "status = ok, expected OK"),
            ("checks.db", "true", Status::Up, "checks.db = true"),
            ("checks.db", "yes", Status::Down, "checks.db = true, expected yes"),
            ("checks.queue.depth", "3", Status::Up, "checks.queue.depth = 3"),
            ("checks.queue.depth", "3.0", Status::Down, "checks.queue.depth = 3, expected 3.0"),
            ("checks.queue.lag", "1.5", Status::Up, "checks.queue.lag = 1.5"),
            ("checks.queue.name", "jobs", Status::Up, "checks.queue.name = jobs"),
            ("version", "null", Status::Up, "version = null"),
            // A string is compared without its quotes; so is a string "true".
            ("quoted", "true", Status::Up, "quoted = true"),
            // Objects and arrays are compared as their compact JSON text.
            ("nodes", "[1,2]", Status::Up, "nodes = [1,2]"),
            ("checks.queue", "x", Status::Down, r#"checks.queue = {"depth":3,"lag":1.5,"name":"jobs"}, expected x"#),
            ("missing", "ok", Status::Down, "no field `missing` in the response"),
            ("checks.cache", "ok", Status::Down, "no field `checks.cache` in the response"),
            // A path does not go into a string, a number or an array.
            ("status.code", "ok", Status::Down, "no field `status.code` in the response"),
            ("checks.db.x", "ok", Status::Down, "no field `checks.db.x` in the response"),
            ("nodes.0", "1", Status::Down, "no field `nodes.0` in the response"),
        ];
        for (field, expect, status, message) in cases {
            let outcome = judge(&expecting(field, expect), 200, HEALTH.as_bytes());
            assert_eq!((outcome.status, outcome.message.as_str()), (status, message), "field {field}, expect {expect}");
        }
    }

    #[test]
    fn only_a_2xx_response_with_a_json_body_is_judged() {
        let settings = expecting("status", "ok");
        let body = br#"{"status":"ok"}"#;
        // (status, body, verdict)
        let cases: &[(u16, &[u8], Outcome)] = &[
            (200, body, Outcome::up("status = ok")),
            (204, body, Outcome::up("status = ok")),
            (299, body, Outcome::up("status = ok")),
            (199, body, Outcome::down("status 199")),
            (300, body, Outcome::down("status 300")),
            (301, body, Outcome::down("status 301")),
            (404, body, Outcome::down("status 404")),
            (503, body, Outcome::down("status 503")),
            (200, b"<html>ok</html>", Outcome::down("body is not JSON: expected value at line 1 column 1")),
            (200, b"", Outcome::down("body is not JSON: EOF while parsing a value at line 1 column 0")),
            (
                200,
                br#"{"status":"ok""#,
                Outcome::down("body is not JSON: EOF while parsing an object at line 1 column 14"),
            ),
            // A JSON body that is not an object has no fields.
            (200, b"\"ok\"", Outcome::down("no field `status` in the response")),
            (200, b"[]", Outcome::down("no field `status` in the response")),
        ];
        for (status, body, verdict) in cases {
            assert_eq!(
                &judge(&settings, *status, body),
                verdict,
                "status {status}, body {:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn validate_refuses_bad_targets_paths_and_timeouts() {
        let good = [("field", "checks.db"), ("expect", "true")];
        assert_eq!(HttpJson::validate(&Config::from_pairs(&good), "http://127.0.0.1:8080/health"), Ok(()));
        assert_eq!(HttpJson::validate(&Config::from_pairs(&good), "https://api.example.com/health"), Ok(()));
        let target = |t: &str| Err(Error::config(format!("target `{t}`: expected an http:// or https:// URL")));
        for bad in ["api.example.com/health", "ftp://example.com/x", "HTTP://example.com", ""] {
            assert_eq!(HttpJson::validate(&Config::from_pairs(&good), bad), target(bad), "target {bad:?}");
        }
        let path = Err(Error::config("setting `field`: expected a dotted path such as checks.db"));
        for bad in ["", ".", "checks.", ".db", "checks..db"] {
            assert_eq!(
                HttpJson::validate(&Config::from_pairs(&[("field", bad), ("expect", "x")]), "http://h/"),
                path,
                "field {bad:?}"
            );
        }
        let with_timeout = |t| Config::from_pairs(&[("field", "status"), ("expect", "ok"), ("timeout", t)]);
        assert_eq!(HttpJson::validate(&with_timeout("250ms"), "http://h/"), Ok(()));
        assert_eq!(
            HttpJson::validate(&with_timeout("soon"), "http://h/"),
            Err(Error::config("setting `timeout`: expected a duration such as 500ms, 10s, 5m or 1h, got `soon`"))
        );
        assert_eq!(
            HttpJson::validate(&with_timeout("0s"), "http://h/"),
            Err(Error::config("setting `timeout`: must be more than 0"))
        );
        assert_eq!(
            HttpJson::validate(&Config::from_pairs(&[("field", "status")]), "http://h/"),
            Err(Error::config("missing setting `expect`"))
        );
        assert_eq!(
            HttpJson::validate(&Config::from_pairs(&[("expect", "ok")]), "http://h/"),
            Err(Error::config("missing setting `field`"))
        );
    }

    #[test]
    fn the_declared_default_timeout_is_the_one_used() {
        let info = HttpJson::info();
        let timeout = info.fields.iter().find(|f| f.name == "timeout").unwrap();
        let declared = Duration::from_value(timeout.default.as_deref().unwrap()).unwrap();
        assert_eq!(expecting("status", "ok").timeout, declared);
        let required: Vec<&str> = info.fields.iter().filter(|f| f.required).map(|f| f.name.as_str()).collect();
        assert_eq!(required, ["field", "expect"]);
    }
}
