//! What the host gives a plugin instance: its store state (WASI with no
//! ambient authority, wasi:http behind the destination rules, a memory
//! limiter) and the qu:plugin imports (log, system, tls-inspect, tcp).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::bindings::checker::qu::plugin::{log, system, tls_inspect, types};
use crate::bindings::sink::qu::plugin::tcp;
use crate::rules::Rules;

/// Log lines one call may write; the rest are counted and dropped.
const LOG_LINES_MAX: u32 = 50;
/// Longest log line kept.
const LOG_CHARS_MAX: usize = 1000;

/// Per-call state of one instance.
pub struct State {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) http: WasiHttpCtx,
    pub(crate) hooks: Hooks,
    pub(crate) limiter: Limiter,
    pub(crate) plugin: Arc<str>,
    pub(crate) rules: Arc<Rules>,
    pub(crate) resolvers: Arc<Vec<SocketAddr>>,
    pub(crate) log_lines: u32,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for State {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

/// Plugins' HTTP client: pooled, so a check plugin probing the same target
/// every interval reuses its connection, like a native probe.
pub type HttpClient =
    hyper_util::client::legacy::Client<qu_transport::client::PluginConnector, wasmtime_wasi_http::WasiBody>;

/// wasi:http behind the rules: a request to a destination the rules do not
/// allow fails with `HttpRequestDenied` before any lookup.
pub struct Hooks {
    pub(crate) rules: Arc<Rules>,
    pub(crate) plugin: Arc<str>,
    pub(crate) client: HttpClient,
    /// Requests denied in this call (the first few are logged).
    pub(crate) denied: u32,
}

/// Denied requests logged per call; the rest are counted in one line.
pub const DENIED_LOGGED_MAX: u32 = 5;

impl WasiHttpHooks for Hooks {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<wasmtime_wasi_http::WasiBody>,
                        Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                    ),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        drop(fut);
        let uri = request.uri();
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        let host = uri.host().unwrap_or("").to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        if !self.rules.allows(&host, port) {
            self.denied += 1;
            if self.denied <= DENIED_LOGGED_MAX {
                tracing::warn!(plugin = %self.plugin, "plugin: denied HTTP request to {host}:{port} (not in its allow list)");
            } else if self.denied == DENIED_LOGGED_MAX + 1 {
                tracing::warn!(
                    plugin = %self.plugin,
                    "plugin: more than {DENIED_LOGGED_MAX} denied HTTP requests in one call; not logging the rest"
                );
            }
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        let client = self.client.clone();
        Box::new(async move {
            use http_body_util::BodyExt;
            let first_byte = options.and_then(|o| o.first_byte_timeout).unwrap_or(Duration::from_secs(600));
            let response = match tokio::time::timeout(first_byte, client.request(request)).await {
                Err(_) => return Err(wasmtime_wasi_http::Error::ConnectionReadTimeout),
                Ok(Err(error)) => return Err(client_error(&error)),
                Ok(Ok(response)) => response,
            };
            let response = response.map(|body| body.map_err(wasmtime_wasi_http::Error::from).boxed_unsync());
            // The pool drives the connection; nothing more to wait for.
            let done: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send> =
                Box::new(async { Ok(()) });
            Ok((response, done))
        })
    }
}

/// The wasi:http error code for a failed request, from the error chain.
fn client_error(error: &hyper_util::client::legacy::Error) -> wasmtime_wasi_http::Error {
    use wasmtime_wasi_http::Error;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    let mut text = Vec::new();
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return Error::ConnectionRefused,
                std::io::ErrorKind::TimedOut => return Error::ConnectionTimeout,
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof => {
                    return Error::ConnectionTerminated;
                }
                _ => {}
            }
        }
        text.push(e.to_string());
        source = e.source();
    }
    let text = text.join(": ");
    if text.contains("dns error") || text.contains("failed to lookup address") {
        Error::DnsError { rcode: Some("no such host".into()), info_code: None }
    } else if text.contains("certificate") || text.contains("UnknownIssuer") {
        Error::TlsCertificateError
    } else if text.contains("tls") || text.contains("TLS") {
        Error::TlsProtocolError
    } else if error.is_connect() {
        Error::ConnectionRefused
    } else {
        Error::InternalError(Some(text.chars().take(200).collect()))
    }
}

/// Caps linear memory and tables; remembers that the cap was hit so the
/// resulting trap can be reported as what it is.
pub struct Limiter {
    pub(crate) memory_max: usize,
    pub(crate) exceeded: bool,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_max {
            self.exceeded = true;
            return Err(wasmtime::Error::msg("memory limit exceeded"));
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

impl types::Host for State {}

impl log::Host for State {
    async fn log(&mut self, level: log::Level, message: String) {
        self.log_lines += 1;
        if self.log_lines > LOG_LINES_MAX {
            if self.log_lines == LOG_LINES_MAX + 1 {
                tracing::warn!(plugin = %self.plugin, "plugin: more than {LOG_LINES_MAX} log lines in one call; dropping the rest");
            }
            return;
        }
        let mut message: String = message.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
        if message.len() > LOG_CHARS_MAX {
            let mut end = LOG_CHARS_MAX;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push('…');
        }
        let plugin = &*self.plugin;
        match level {
            log::Level::Trace => tracing::trace!(plugin, "plugin: {message}"),
            log::Level::Debug => tracing::debug!(plugin, "plugin: {message}"),
            log::Level::Info => tracing::info!(plugin, "plugin: {message}"),
            log::Level::Warn => tracing::warn!(plugin, "plugin: {message}"),
            log::Level::Error => tracing::error!(plugin, "plugin: {message}"),
        }
    }
}

impl system::Host for State {
    async fn resolvers(&mut self) -> Vec<String> {
        self.resolvers.iter().map(ToString::to_string).collect()
    }
}

fn timeout_of(millis: u32) -> Duration {
    Duration::from_millis(u64::from(millis.clamp(1, 120_000)))
}

/// Connects to `host:port` if the rules allow it (checked on the name,
/// before any lookup).
async fn dial(rules: &Rules, host: &str, port: u16, timeout: Duration) -> Result<TcpStream, String> {
    if !rules.allows(host, port) {
        return Err(format!("denied by allow-list: {host}:{port}"));
    }
    match tokio::time::timeout(timeout, TcpStream::connect((host, port))).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(format!("connect {host}:{port}: {e}")),
        Err(_) => Err(format!("connect {host}:{port}: timeout after {timeout:?}")),
    }
}

impl tls_inspect::Host for State {
    async fn inspect(
        &mut self,
        host: String,
        port: u16,
        server_name: Option<String>,
        ca_pem: Option<String>,
        timeout_ms: u32,
    ) -> Result<tls_inspect::Handshake, String> {
        let timeout = timeout_of(timeout_ms);
        let stream = dial(&self.rules, &host, port, timeout).await?;
        let name = server_name.unwrap_or_else(|| host.trim_start_matches('[').trim_end_matches(']').to_string());
        let seen = qu_transport::client::inspect(stream, &name, ca_pem.as_deref(), timeout).await?;
        Ok(tls_inspect::Handshake {
            chain_valid: seen.chain_error.is_none(),
            chain_error: seen.chain_error,
            protocol: seen.protocol,
            chain: seen
                .chain
                .into_iter()
                .map(|c| tls_inspect::Certificate {
                    subject: c.subject,
                    issuer: c.issuer,
                    names: c.names,
                    not_before: c.not_before,
                    not_after: c.not_after,
                })
                .collect(),
        })
    }
}

/// A sink's TCP connection, plain or TLS.
pub struct TcpConnection {
    host: String,
    ca_pem: Option<String>,
    stream: Option<Stream>,
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<qu_transport::client::ClientTlsStream<TcpStream>>),
}

impl tcp::Host for State {}

impl tcp::HostConnection for State {
    async fn connect(
        &mut self,
        host: String,
        port: u16,
        security: tcp::Security,
        ca_pem: Option<String>,
        timeout_ms: u32,
    ) -> Result<Resource<TcpConnection>, String> {
        let timeout = timeout_of(timeout_ms);
        let stream = dial(&self.rules, &host, port, timeout).await?;
        let stream = match security {
            tcp::Security::None => Stream::Plain(stream),
            tcp::Security::Implicit => {
                let tls =
                    tokio::time::timeout(timeout, qu_transport::client::connect(stream, &host, ca_pem.as_deref()))
                        .await
                        .map_err(|_| format!("TLS to {host}:{port}: timeout after {timeout:?}"))??;
                Stream::Tls(Box::new(tls))
            }
        };
        let connection = TcpConnection { host, ca_pem, stream: Some(stream) };
        self.table.push(connection).map_err(|e| e.to_string())
    }

    async fn read(&mut self, this: Resource<TcpConnection>, max: u32, timeout_ms: u32) -> Result<Vec<u8>, String> {
        let connection = self.table.get_mut(&this).map_err(|e| e.to_string())?;
        let mut buffer = vec![0u8; max.clamp(1, 1 << 20) as usize];
        let read = async {
            match connection.stream.as_mut() {
                Some(Stream::Plain(s)) => s.read(&mut buffer).await,
                Some(Stream::Tls(s)) => s.read(&mut buffer).await,
                None => Err(std::io::Error::other("connection failed earlier")),
            }
        };
        let timeout = timeout_of(timeout_ms);
        let n = tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| format!("read: timeout after {timeout:?}"))?
            .map_err(|e| format!("read: {e}"))?;
        buffer.truncate(n);
        Ok(buffer)
    }

    async fn write(&mut self, this: Resource<TcpConnection>, data: Vec<u8>, timeout_ms: u32) -> Result<(), String> {
        let connection = self.table.get_mut(&this).map_err(|e| e.to_string())?;
        let write = async {
            match connection.stream.as_mut() {
                Some(Stream::Plain(s)) => s.write_all(&data).await,
                Some(Stream::Tls(s)) => {
                    s.write_all(&data).await?;
                    s.flush().await
                }
                None => Err(std::io::Error::other("connection failed earlier")),
            }
        };
        let timeout = timeout_of(timeout_ms);
        tokio::time::timeout(timeout, write)
            .await
            .map_err(|_| format!("write: timeout after {timeout:?}"))?
            .map_err(|e| format!("write: {e}"))
    }

    async fn start_tls(&mut self, this: Resource<TcpConnection>, timeout_ms: u32) -> Result<(), String> {
        let connection = self.table.get_mut(&this).map_err(|e| e.to_string())?;
        let plain = match connection.stream.take() {
            Some(Stream::Plain(s)) => s,
            Some(tls @ Stream::Tls(_)) => {
                connection.stream = Some(tls);
                return Err("start-tls: the connection is already TLS".into());
            }
            None => return Err("start-tls: connection failed earlier".into()),
        };
        let timeout = timeout_of(timeout_ms);
        let tls = tokio::time::timeout(
            timeout,
            qu_transport::client::connect(plain, &connection.host, connection.ca_pem.as_deref()),
        )
        .await
        .map_err(|_| format!("start-tls: timeout after {timeout:?}"))??;
        connection.stream = Some(Stream::Tls(Box::new(tls)));
        Ok(())
    }

    async fn drop(&mut self, this: Resource<TcpConnection>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}
