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
    Ok(Settings {
        server_name: config.optional("server_name")?,
        warn_days: config.get_or("warn_days", 14)?,
        verify_chain: config.get_or("verify_chain", false)?,
        ca,
        timeout: config.get_or("timeout", Duration::from_secs(5))?,
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
