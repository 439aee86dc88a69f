//! The built-in `tls` check: connects to TARGET (`host[:port]`, port 443
//! by default), reads the certificate the server presents and judges its
//! expiry: DOWN when expired (or, with `verify_chain`, when the chain does
//! not verify), DEGRADED — a DOWN vote that says why — within `warn_days`
//! of expiry, UP otherwise.
//!
//! The handshake is done by the host (`tls-inspect`), which is the only way
//! a plugin can see a peer certificate; the host applies the same
//! destination rules as for any connection.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use qu_sdk::tls::Handshake;
use qu_sdk::{Check, Config, Error, Info, Outcome};

struct Tls;

impl Check for Tls {
    fn info() -> Info {
        Info::new("tls", env!("CARGO_PKG_VERSION"), "a TLS certificate is valid and not about to expire")
            .target("host[:port], port 443 by default")
            .optional("server_name", None, "SNI name to present; default: the host")
            .optional("warn_days", Some("14"), "days before expiry at which the check fails")
            .optional("verify_chain", Some("false"), "also fail when the chain does not verify for the name")
            .optional("ca", None, "a PEM CA certificate trusted besides the system roots")
            .optional("timeout", Some("5s"), "handshake timeout")
    }

    fn validate(config: &Config, target: &str) -> Result<(), Error> {
        settings(config)?;
        split_target(target)?;
        Ok(())
    }

    fn check(config: &Config, target: &str) -> Result<Outcome, Error> {
        let settings = settings(config)?;
        let (host, port) = split_target(target)?;
        let started = std::time::Instant::now();
        let handshake = qu_sdk::tls::inspect(
            &host,
            port,
            settings.server_name.as_deref(),
            settings.ca.as_deref(),
            settings.timeout,
        )
        .map_err(Error::transient)?;
        let latency = started.elapsed();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        Ok(judge(&handshake, &settings, now).latency(latency))
    }
}

qu_sdk::export_check!(Tls);

struct Settings {
    server_name: Option<String>,
    warn_days: u32,
    verify_chain: bool,
    ca: Option<String>,
    timeout: Duration,
}

fn settings(config: &Config) -> Result<Settings, Error> {
    let ca: Option<String> = config.optional("ca")?;
    if let Some(ca) = &ca
        && !ca.contains("-----BEGIN CERTIFICATE-----")
    {
        return Err(Error::config("setting `ca`: expected a PEM certificate (-----BEGIN CERTIFICATE-----)"));
    }
    let timeout = config.get_or("timeout", Duration::from_secs(5))?;
    if timeout.is_zero() {
        return Err(Error::config("setting `timeout`: must be more than 0"));
    }
    Ok(Settings {
        server_name: config.optional("server_name")?,
        warn_days: config.get_or("warn_days", 14)?,
        verify_chain: config.get_or("verify_chain", false)?,
        ca,
        timeout,
    })
}

fn split_target(target: &str) -> Result<(String, u16), Error> {
    let bad = || Error::config(format!("target `{target}`: expected host or host:port, e.g. example.com:443"));
    if target.is_empty() || target.contains('/') {
        return Err(bad());
    }
    if let Some(rest) = target.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if after.is_empty() => 443,
            None => return Err(bad()),
        };
        return Ok((host.to_string(), port));
    }
    match target.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Ok((host.to_string(), port.parse().map_err(|_| bad())?)),
        Some(_) => Ok((target.to_string(), 443)), // a bare IPv6 address
        None => Ok((target.to_string(), 443)),
    }
}

fn judge(handshake: &Handshake, settings: &Settings, now: i64) -> Outcome {
    let Some(leaf) = handshake.chain.first() else {
        return Outcome::down("the server sent no certificate");
    };
    let left = leaf.not_after - now;
    let days = left.div_euclid(86_400);
    let outcome = if left <= 0 {
        Outcome::down(format!("certificate expired {} day(s) ago", (-left).div_euclid(86_400)))
    } else if leaf.not_before > now {
        Outcome::down("certificate not valid yet")
    } else if settings.verify_chain && !handshake.chain_valid {
        Outcome::down(format!("chain does not verify: {}", handshake.chain_error.as_deref().unwrap_or("untrusted")))
    } else if days < i64::from(settings.warn_days) {
        Outcome::degraded(format!("certificate expires in {days} day(s) (warn at {})", settings.warn_days))
    } else {
        Outcome::up(format!("certificate expires in {days} days"))
    };
    outcome.metric("days_left", left as f64 / 86_400.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use qu_sdk::tls::Certificate;
    use qu_sdk::{FromValue, Metric, Status};

    const DAY: i64 = 86_400;
    const NOW: i64 = 1_700_000_000;

    fn certificate(not_before: i64, not_after: i64) -> Certificate {
        Certificate {
            subject: "CN=www.example.com".into(),
            issuer: "CN=Example CA".into(),
            names: vec!["www.example.com".into()],
            not_before,
            not_after,
        }
    }

    fn handshake(chain: Vec<Certificate>, chain_error: Option<&str>) -> Handshake {
        Handshake {
            chain,
            chain_valid: chain_error.is_none(),
            chain_error: chain_error.map(str::to_string),
            protocol: "TLSv1.3".into(),
        }
    }

    #[test]
    fn the_days_left_decide_up_degraded_or_down() {
        let defaults = settings(&Config::default()).unwrap();
        let warn_at_zero = settings(&Config::from_pairs(&[("warn_days", "0")])).unwrap();
        // (seconds from now to not_after, settings, status, message)
        let cases = [
            (80 * DAY + 5, &defaults, Status::Up, "certificate expires in 80 days"),
            (14 * DAY, &defaults, Status::Up, "certificate expires in 14 days"),
            (14 * DAY - 1, &defaults, Status::Degraded, "certificate expires in 13 day(s) (warn at 14)"),
            (9 * DAY, &defaults, Status::Degraded, "certificate expires in 9 day(s) (warn at 14)"),
            (1, &defaults, Status::Degraded, "certificate expires in 0 day(s) (warn at 14)"),
            (1, &warn_at_zero, Status::Up, "certificate expires in 0 days"),
            (0, &defaults, Status::Down, "certificate expired 0 day(s) ago"),
            (-1, &defaults, Status::Down, "certificate expired 0 day(s) ago"),
            (-2 * DAY - 7, &defaults, Status::Down, "certificate expired 2 day(s) ago"),
            (-2 * DAY - 7, &warn_at_zero, Status::Down, "certificate expired 2 day(s) ago"),
        ];
        for (left, settings, status, message) in cases {
            let outcome = judge(&handshake(vec![certificate(NOW - 30 * DAY, NOW + left)], None), settings, NOW);
            assert_eq!((outcome.status, outcome.message.as_str()), (status, message), "{left} s left");
            assert_eq!(outcome.metrics, [Metric { name: "days_left".into(), value: left as f64 / DAY as f64 }]);
        }
    }

    #[test]
    fn warn_days_moves_the_threshold() {
        let settings = settings(&Config::from_pairs(&[("warn_days", "30")])).unwrap();
        let judged = |days| judge(&handshake(vec![certificate(NOW - DAY, NOW + days * DAY)], None), &settings, NOW);
        assert_eq!(judged(29).message, "certificate expires in 29 day(s) (warn at 30)");
        assert_eq!(judged(29).status, Status::Degraded);
        assert_eq!(judged(30).message, "certificate expires in 30 days");
        assert_eq!(judged(30).status, Status::Up);
    }

    #[test]
    fn validity_start_chain_and_missing_certificates() {
        let lax = settings(&Config::default()).unwrap();
        let strict = settings(&Config::from_pairs(&[("verify_chain", "true")])).unwrap();
        let fresh = || certificate(NOW - DAY, NOW + 90 * DAY);
        let expired = || certificate(NOW - 90 * DAY, NOW - DAY);
        // (handshake, settings, status, message)
        let cases = [
            (
                handshake(vec![certificate(NOW + 10, NOW + 90 * DAY)], None),
                &lax,
                Status::Down,
                "certificate not valid yet",
            ),
            (handshake(vec![fresh()], Some("unknown issuer")), &lax, Status::Up, "certificate expires in 90 days"),
            (
                handshake(vec![fresh()], Some("unknown issuer")),
                &strict,
                Status::Down,
                "chain does not verify: unknown issuer",
            ),
            (
                Handshake { chain_error: None, ..handshake(vec![fresh()], Some("x")) },
                &strict,
                Status::Down,
                "chain does not verify: untrusted",
            ),
            (handshake(vec![fresh()], None), &strict, Status::Up, "certificate expires in 90 days"),
            // Expiry is reported before the chain.
            (
                handshake(vec![expired()], Some("unknown issuer")),
                &strict,
                Status::Down,
                "certificate expired 1 day(s) ago",
            ),
            // Only the leaf's dates count.
            (handshake(vec![fresh(), expired()], None), &lax, Status::Up, "certificate expires in 90 days"),
            (handshake(vec![expired(), fresh()], None), &lax, Status::Down, "certificate expired 1 day(s) ago"),
        ];
        for (case, (handshake, settings, status, message)) in cases.into_iter().enumerate() {
            let outcome = judge(&handshake, settings, NOW);
            assert_eq!((outcome.status, outcome.message.as_str()), (status, message), "case {case}");
        }
        let none = judge(&handshake(Vec::new(), None), &lax, NOW);
        assert_eq!(none, Outcome::down("the server sent no certificate"));
    }

    #[test]
    fn targets_are_host_and_port() {
        let bad =
            |t: &str| Err(Error::config(format!("target `{t}`: expected host or host:port, e.g. example.com:443")));
        let cases = [
            ("example.com", Ok(("example.com".to_string(), 443))),
            ("example.com:8443", Ok(("example.com".to_string(), 8443))),
            ("192.0.2.1:465", Ok(("192.0.2.1".to_string(), 465))),
            ("[2001:db8::1]:8443", Ok(("2001:db8::1".to_string(), 8443))),
            ("[2001:db8::1]", Ok(("2001:db8::1".to_string(), 443))),
            ("2001:db8::1", Ok(("2001:db8::1".to_string(), 443))),
            ("", bad("")),
            ("example.com:", bad("example.com:")),
            ("example.com:99999", bad("example.com:99999")),
            ("example.com:https", bad("example.com:https")),
            ("https://example.com", bad("https://example.com")),
            ("example.com/path", bad("example.com/path")),
            ("[2001:db8::1", bad("[2001:db8::1")),
            ("[2001:db8::1]8443", bad("[2001:db8::1]8443")),
        ];
        for (target, expected) in cases {
            assert_eq!(split_target(target), expected, "target {target:?}");
        }
    }

    #[test]
    fn settings_are_parsed_and_checked() {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let parsed = settings(&Config::from_pairs(&[
            ("server_name", "intranet.example.com"),
            ("warn_days", "21"),
            ("verify_chain", "yes"),
            ("ca", pem),
            ("timeout", "2s"),
        ]))
        .unwrap();
        assert_eq!(parsed.server_name.as_deref(), Some("intranet.example.com"));
        assert_eq!((parsed.warn_days, parsed.verify_chain), (21, true));
        assert_eq!((parsed.ca.as_deref(), parsed.timeout), (Some(pem), Duration::from_secs(2)));

        let refused =
            |pairs: &[(&str, &str)]| Tls::validate(&Config::from_pairs(pairs), "example.com").unwrap_err().to_string();
        assert_eq!(
            refused(&[("ca", "not a pem")]),
            "setting `ca`: expected a PEM certificate (-----BEGIN CERTIFICATE-----)"
        );
        assert_eq!(
            refused(&[("warn_days", "-1")]),
            "setting `warn_days`: expected a number from 0 to 4294967295, got `-1`"
        );
        assert_eq!(
            refused(&[("verify_chain", "maybe")]),
            "setting `verify_chain`: expected true or false, got `maybe`"
        );
        assert_eq!(refused(&[("timeout", "0ms")]), "setting `timeout`: must be more than 0");
        assert_eq!(
            Tls::validate(&Config::default(), "example.com/x"),
            Err(Error::config("target `example.com/x`: expected host or host:port, e.g. example.com:443"))
        );
        assert_eq!(Tls::validate(&Config::default(), "example.com:465"), Ok(()));
    }

    #[test]
    fn declared_defaults_are_the_ones_used() {
        let info = Tls::info();
        let default = |name: &str| info.fields.iter().find(|f| f.name == name).unwrap().default.clone().unwrap();
        let used = settings(&Config::default()).unwrap();
        assert_eq!(used.warn_days, u32::from_value(&default("warn_days")).unwrap());
        assert_eq!(used.verify_chain, bool::from_value(&default("verify_chain")).unwrap());
        assert_eq!(used.timeout, Duration::from_value(&default("timeout")).unwrap());
        assert_eq!((used.server_name, used.ca), (None, None));
    }
}
