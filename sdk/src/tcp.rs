//! Outbound TCP with TLS (implicit or STARTTLS) for sinks that speak their
//! own protocol, such as SMTP. The host verifies certificates (system
//! roots plus the CA given).

use std::time::Duration;

use crate::__sink::tcp as wit;

/// How a connection starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// Plain TCP; upgrade later with [`Stream::start_tls`].
    None,
    /// TLS from the first byte.
    Implicit,
}

/// An open connection with a line reader on top.
pub struct Stream {
    connection: wit::Connection,
    buffered: Vec<u8>,
    timeout: Duration,
}

fn millis(d: Duration) -> u32 {
    d.as_millis().min(u32::MAX as u128) as u32
}

impl Stream {
    /// Connects to `host:port`. `timeout` bounds the connect and every
    /// later read and write.
    pub fn connect(
        host: &str,
        port: u16,
        security: Security,
        ca_pem: Option<&str>,
        timeout: Duration,
    ) -> Result<Self, String> {
        let security = match security {
            Security::None => wit::Security::None,
            Security::Implicit => wit::Security::Implicit,
        };
        let connection = wit::Connection::connect(host, port, security, ca_pem, millis(timeout))?;
        Ok(Self { connection, buffered: Vec::new(), timeout })
    }

    /// Writes all of `data`.
    pub fn write_all(&mut self, data: &[u8]) -> Result<(), String> {
        self.connection.write(data, millis(self.timeout))
    }

    /// Reads one line (up to and without `\r\n`).
    pub fn read_line(&mut self) -> Result<String, String> {
        loop {
            if let Some(end) = self.buffered.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buffered.drain(..end + 2).take(end).collect();
                return Ok(String::from_utf8_lossy(&line).into_owned());
            }
            if self.buffered.len() > 64 * 1024 {
                return Err("line longer than 64 KiB".into());
            }
            let chunk = self.connection.read(16 * 1024, millis(self.timeout))?;
            if chunk.is_empty() {
                return Err("connection closed by the server".into());
            }
            self.buffered.extend_from_slice(&chunk);
        }
    }

    /// Upgrades to TLS (STARTTLS). Anything buffered but unread is dropped,
    /// as the protocol requires.
    pub fn start_tls(&mut self) -> Result<(), String> {
        self.buffered.clear();
        self.connection.start_tls(millis(self.timeout))
    }
}
