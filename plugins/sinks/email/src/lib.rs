//! The built-in `email` sink: sends the alert over SMTP — STARTTLS on 587
//! by default, implicit TLS (465), or plain (only to the local machine
//! unless `allow_plain_remote` is set) — with AUTH PLAIN or LOGIN, as an
//! RFC 5322 message with `Date`, `Message-ID` and a UTF-8 subject encoded
//! per RFC 2047, to one or more recipients. Every step has a timeout; the
//! server's 4xx replies are transient, 5xx permanent.

mod message;

use std::time::Duration;

use qu_sdk::tcp::{Security, Stream};
use qu_sdk::{Config, Destination, Error, Event, Info, Sink};

struct Email;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    StartTls,
    Implicit,
    Plain,
}

struct Settings {
    host: String,
    port: u16,
    tls: Mode,
    from: String,
    to: Vec<String>,
    user: Option<String>,
    password: Option<String>,
    ca: Option<String>,
    timeout: Duration,
}

impl Sink for Email {
    fn info() -> Info {
        Info::new("email", env!("CARGO_PKG_VERSION"), "sends each alert as an email over SMTP")
            .required("host", "SMTP server")
            .destination(Destination::Host { port_setting: "port".into(), defaults: vec![587, 465, 25] })
            .optional("port", Some("587 (465 for implicit TLS, 25 for none)"), "SMTP port")
            .optional("tls", Some("starttls"), "starttls, implicit or none")
            .required("from", "sender address")
            .required("to", "recipient addresses, comma-separated")
            .optional("user", None, "user for SMTP AUTH")
            .optional("password", None, "password for SMTP AUTH")
            .optional("ca", None, "a PEM CA certificate trusted besides the system roots")
            .optional("allow_plain_remote", Some("false"), "allow tls=none to a host other than this machine")
            .optional("timeout", Some("10s"), "timeout of each step")
    }

    fn validate(config: &Config) -> Result<(), Error> {
        settings(config).map(|_| ())
    }

    fn send(event: &Event, config: &Config) -> Result<(), Error> {
        let s = settings(config)?;
        let security = if s.tls == Mode::Implicit { Security::Implicit } else { Security::None };
        let mut smtp = Smtp {
            stream: Stream::connect(&s.host, s.port, security, s.ca.as_deref(), s.timeout).map_err(connection_error)?,
        };
        smtp.expect(220, "greeting")?;
        let mut features = smtp.ehlo()?;
        if s.tls == Mode::StartTls {
            if !features.iter().any(|f| f.eq_ignore_ascii_case("STARTTLS")) {
                return Err(Error::permanent(format!(
                    "{} does not offer STARTTLS (set tls=implicit or tls=none)",
                    s.host
                )));
            }
            smtp.command("STARTTLS", 220, "STARTTLS")?;
            smtp.stream.start_tls().map_err(connection_error)?;
            features = smtp.ehlo()?;
        }
        if let (Some(user), Some(password)) = (&s.user, &s.password) {
            let auth =
                features.iter().find(|f| f.to_ascii_uppercase().starts_with("AUTH")).cloned().unwrap_or_default();
            let mechanisms: Vec<String> = auth.split_whitespace().skip(1).map(|m| m.to_ascii_uppercase()).collect();
            if mechanisms.iter().any(|m| m == "PLAIN") {
                let token = message::base64(format!("\0{user}\0{password}").as_bytes());
                smtp.command(&format!("AUTH PLAIN {token}"), 235, "AUTH PLAIN")?;
            } else if mechanisms.iter().any(|m| m == "LOGIN") {
                smtp.command("AUTH LOGIN", 334, "AUTH LOGIN")?;
                smtp.command(&message::base64(user.as_bytes()), 334, "AUTH LOGIN user")?;
                smtp.command(&message::base64(password.as_bytes()), 235, "AUTH LOGIN password")?;
            } else {
                return Err(Error::permanent(format!("{} offers no AUTH PLAIN or LOGIN ({auth})", s.host)));
            }
        }
        smtp.command(&format!("MAIL FROM:<{}>", s.from), 250, "MAIL FROM")?;
        for to in &s.to {
            smtp.command(&format!("RCPT TO:<{to}>"), 250, "RCPT TO")?;
        }
        smtp.command("DATA", 354, "DATA")?;
        let text = message::render(event, &s.from, &s.to, &s.host);
        smtp.stream.write_all(message::dot_stuff(&text).as_bytes()).map_err(Error::transient)?;
        smtp.command(".", 250, "message")?;
        let _ = smtp.stream.write_all(b"QUIT\r\n");
        Ok(())
    }
}

qu_sdk::export_sink!(Email);

/// A connection or TLS failure: retrying helps with a server that is
/// away, not with a destination the allow list refuses or a certificate
/// that does not verify.
fn connection_error(message: String) -> Error {
    let lasting =
        ["denied by allow-list", "certificate", "CA certificate", "no PEM certificate", "not a valid TLS server name"];
    if lasting.iter().any(|m| message.contains(m)) { Error::permanent(message) } else { Error::transient(message) }
}

fn settings(config: &Config) -> Result<Settings, Error> {
    let tls = match config.get_or("tls", "starttls".to_string())?.to_ascii_lowercase().as_str() {
        "starttls" => Mode::StartTls,
        "implicit" => Mode::Implicit,
        "none" => Mode::Plain,
        other => {
            return Err(Error::config(format!("setting `tls`: expected starttls, implicit or none, got `{other}`")));
        }
    };
    let default_port = match tls {
        Mode::StartTls => 587,
        Mode::Implicit => 465,
        Mode::Plain => 25,
    };
    let host: String = config.required("host")?;
    let local = matches!(host.as_str(), "localhost" | "127.0.0.1" | "::1" | "[::1]");
    if tls == Mode::Plain && !local && !config.get_or("allow_plain_remote", false)? {
        return Err(Error::config(format!(
            "tls=none sends the password and the alert in clear text; to {host} that needs allow_plain_remote=true"
        )));
    }
    let to: Vec<String> = config.required("to")?;
    let from: String = config.required("from")?;
    for address in to.iter().chain(std::iter::once(&from)) {
        if !message::is_address(address) {
            return Err(Error::config(format!("`{address}` is not an email address")));
        }
    }
    if to.is_empty() {
        return Err(Error::config("setting `to`: no recipient"));
    }
    let (user, password): (Option<String>, Option<String>) = (config.optional("user")?, config.optional("password")?);
    if user.is_some() != password.is_some() {
        return Err(Error::config("settings `user` and `password` go together"));
    }
    let ca: Option<String> = config.optional("ca")?;
    if ca.as_ref().is_some_and(|pem| !pem.contains("-----BEGIN CERTIFICATE-----")) {
        return Err(Error::config("setting `ca`: expected a PEM certificate (-----BEGIN CERTIFICATE-----)"));
    }
    Ok(Settings {
        host,
        port: config.get_or("port", default_port)?,
        tls,
        from,
        to,
        user,
        password,
        ca,
        timeout: config.get_or("timeout", Duration::from_secs(10))?,
    })
}

struct Smtp {
    stream: Stream,
}

impl Smtp {
    /// Reads one (possibly multi-line) reply: its code and its lines.
    fn reply(&mut self) -> Result<(u16, Vec<String>), Error> {
        let mut lines = Vec::new();
        loop {
            let line = self.stream.read_line().map_err(Error::transient)?;
            let code = line.get(..3).and_then(|c| c.parse::<u16>().ok());
            let Some(code) = code else {
                return Err(Error::transient(format!("not an SMTP reply: `{line}`")));
            };
            let more = line.as_bytes().get(3) == Some(&b'-');
            lines.push(line.get(4..).unwrap_or("").to_string());
            if !more {
                return Ok((code, lines));
            }
        }
    }

    fn expect(&mut self, want: u16, step: &str) -> Result<Vec<String>, Error> {
        let (code, lines) = self.reply()?;
        if code == want {
            return Ok(lines);
        }
        let text = format!("{step}: the server answered {code} {}", lines.join(" "));
        // Never echo credentials back: AUTH replies carry no secrets, commands are not shown.
        Err(if (400..500).contains(&code) { Error::transient(text) } else { Error::permanent(text) })
    }

    fn command(&mut self, line: &str, want: u16, step: &str) -> Result<Vec<String>, Error> {
        self.stream.write_all(format!("{line}\r\n").as_bytes()).map_err(Error::transient)?;
        self.expect(want, step)
    }

    fn ehlo(&mut self) -> Result<Vec<String>, Error> {
        let lines = self.command("EHLO qu", 250, "EHLO")?;
        Ok(lines.into_iter().skip(1).collect())
    }
}
