//! What the host gives a plugin instance: its store state (WASI with no
//! ambient authority, wasi:http behind the destination rules, a memory
//! limiter) and the qu:plugin imports (log, system, tls-inspect, tcp).

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::rules::{Denial, Rules, Special, Unreachable, special};

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
    pub(crate) denials: Arc<Denials>,
    pub(crate) resolvers: Arc<Vec<SocketAddr>>,
    pub(crate) log_lines: u32,
    pub(crate) sockets: SocketBudget,
}

/// Sockets one call may create, and the node-wide budget they come out of.
pub struct SocketBudget {
    pub(crate) created: u32,
    /// Node-wide permits this call holds, one per socket, until it ends.
    pub(crate) held: Vec<tokio::sync::OwnedSemaphorePermit>,
    pub(crate) node: Arc<tokio::sync::Semaphore>,
}

/// Sockets one plugin call may create.
pub const SOCKETS_PER_CALL_MAX: u32 = 64;

impl State {
    /// Takes one socket out of the call's and the node's budget, or says
    /// why not. Every socket a call opens counts: WASI's, tls-inspect's and
    /// the sink TCP connections.
    fn take_socket(&mut self) -> Result<(), String> {
        let why = if self.sockets.created >= SOCKETS_PER_CALL_MAX {
            format!("socket: refused a socket beyond the {SOCKETS_PER_CALL_MAX} one call may open")
        } else {
            match self.sockets.node.clone().try_acquire_owned() {
                Ok(permit) => {
                    self.sockets.held.push(permit);
                    self.sockets.created += 1;
                    return Ok(());
                }
                Err(_) => "socket: refused: plugin calls on this node hold every socket of their budget \
                           (the rest of the open-file limit is the daemon's own)"
                    .to_string(),
            }
        };
        self.denials.note(&why);
        Err(why)
    }

    /// [`State::take_socket`] for WASI: `new-socket-limit` to the guest.
    fn take_wasi_socket(&mut self) -> Result<(), wasmtime_wasi::p2::SocketError> {
        self.take_socket().map_err(|_| wasmtime_wasi::p2::bindings::sockets::network::ErrorCode::NewSocketLimit.into())
    }
}

impl wasmtime_wasi::p2::bindings::sockets::network::Host for State {
    fn convert_error_code(
        &mut self,
        error: wasmtime_wasi::p2::SocketError,
    ) -> wasmtime::Result<wasmtime_wasi::p2::bindings::sockets::network::ErrorCode> {
        use wasmtime_wasi::sockets::WasiSocketsView;
        wasmtime_wasi::p2::bindings::sockets::network::Host::convert_error_code(&mut self.sockets(), error)
    }

    fn network_error_code(
        &mut self,
        error: Resource<wasmtime_wasi::p2::bindings::sockets::network::Error>,
    ) -> wasmtime::Result<Option<wasmtime_wasi::p2::bindings::sockets::network::ErrorCode>> {
        use wasmtime_wasi::sockets::WasiSocketsView;
        wasmtime_wasi::p2::bindings::sockets::network::Host::network_error_code(&mut self.sockets(), error)
    }
}

impl wasmtime_wasi::p2::bindings::sockets::network::HostNetwork for State {
    fn drop(&mut self, this: Resource<wasmtime_wasi::p2::bindings::sockets::network::Network>) -> wasmtime::Result<()> {
        use wasmtime_wasi::sockets::WasiSocketsView;
        wasmtime_wasi::p2::bindings::sockets::network::HostNetwork::drop(&mut self.sockets(), this)
    }
}

impl wasmtime_wasi::p2::bindings::sockets::tcp_create_socket::Host for State {
    fn create_tcp_socket(
        &mut self,
        family: wasmtime_wasi::p2::bindings::sockets::network::IpAddressFamily,
    ) -> wasmtime_wasi::p2::SocketResult<Resource<wasmtime_wasi::p2::TcpSocket>> {
        use wasmtime_wasi::sockets::WasiSocketsView;
        self.take_wasi_socket()?;
        wasmtime_wasi::p2::bindings::sockets::tcp_create_socket::Host::create_tcp_socket(&mut self.sockets(), family)
    }
}

impl wasmtime_wasi::p2::bindings::sockets::udp_create_socket::Host for State {
    async fn create_udp_socket(
        &mut self,
        family: wasmtime_wasi::p2::bindings::sockets::network::IpAddressFamily,
    ) -> wasmtime_wasi::p2::SocketResult<Resource<wasmtime_wasi::p2::UdpSocket>> {
        use wasmtime_wasi::sockets::WasiSocketsView;
        self.take_wasi_socket()?;
        wasmtime_wasi::p2::bindings::sockets::udp_create_socket::Host::create_udp_socket(&mut self.sockets(), family)
            .await
    }
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
    hyper_util::client::legacy::Client<qu_transport::client::HttpsOver<Connector>, wasmtime_wasi_http::WasiBody>;

/// The two clients behind wasi:http: `strict`, whose names never reach a
/// special address or the peer port, and `named`, for the destinations an
/// allow list names exactly (`HOST:PORT`), which may.
#[derive(Clone)]
pub struct HttpClients {
    pub(crate) strict: HttpClient,
    pub(crate) named: HttpClient,
}

impl HttpClients {
    pub(crate) fn new(peer_port: Arc<AtomicU32>, sockets: Arc<tokio::sync::Semaphore>) -> Result<Self, String> {
        let client = |names_reach_special| {
            let tcp = Connector {
                timeout: Duration::from_secs(10),
                peer_port: peer_port.clone(),
                names_reach_special,
                sockets: sockets.clone(),
            };
            let connector = qu_transport::client::https_over(tcp)?;
            Ok::<_, String>(
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(90))
                    .pool_max_idle_per_host(8)
                    .build(connector),
            )
        };
        Ok(Self { strict: client(false)?, named: client(true)? })
    }
}

/// The TCP connector of plugins' HTTP requests. An address in the URL was
/// checked against the call's rules before the request got here; a name is
/// resolved here, once, and only addresses that pass are connected to (so
/// a name cannot answer one thing to a check and another to the connect).
#[derive(Clone)]
pub struct Connector {
    timeout: Duration,
    peer_port: Arc<AtomicU32>,
    names_reach_special: bool,
    /// The node-wide budget of plugin sockets: every connection, pooled
    /// or not, holds one until it is closed.
    sockets: Arc<tokio::sync::Semaphore>,
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<Counted>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let host = uri.host().unwrap_or("").trim_start_matches('[').trim_end_matches(']').to_string();
            let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
            let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
            let peer_port = match this.peer_port.load(Ordering::Relaxed) {
                0 => None,
                port => u16::try_from(port).ok(),
            };
            let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
                Ok(ip) if special(ip) == Some(Special::Unspecified) => {
                    let denial = Denial::Unspecified { addr: SocketAddr::new(ip, port) };
                    return Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, denial));
                }
                Ok(ip) => vec![SocketAddr::new(ip.to_canonical(), port)],
                Err(_) => {
                    let mut rules = crate::rules::Rules::for_name(&host, port, this.names_reach_special);
                    rules.set_peer_port(peer_port);
                    let found = tokio::time::timeout(this.timeout, rules.resolve(&host, port))
                        .await
                        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "resolve: timeout"))?;
                    match found {
                        Ok(addrs) => addrs,
                        Err(Unreachable::Denied(denial)) => {
                            return Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, denial));
                        }
                        Err(Unreachable::Lookup(why)) => return Err(std::io::Error::other(why)),
                    }
                }
            };
            let Ok(permit) = this.sockets.clone().try_acquire_owned() else {
                let why = "plugin calls on this node hold every socket of their budget";
                return Err(std::io::Error::other(why));
            };
            let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, format!("{host}: no addresses"));
            for addr in addrs {
                match tokio::time::timeout(this.timeout, TcpStream::connect(addr)).await {
                    Ok(Ok(stream)) => {
                        let _ = stream.set_nodelay(true);
                        return Ok(TokioIo::new(Counted { stream, _permit: permit }));
                    }
                    Ok(Err(error)) => last = error,
                    Err(_) => {
                        last = std::io::Error::new(std::io::ErrorKind::TimedOut, format!("connect {addr}: timeout"))
                    }
                }
            }
            Err(last)
        })
    }
}

/// A connection of plugins' HTTP client, holding its place in the node's
/// socket budget until it is closed.
pub struct Counted {
    stream: TcpStream,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl tokio::io::AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Counted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl hyper_util::client::legacy::connect::Connection for Counted {
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        self.stream.connected()
    }
}

/// The denied connections and requests of one call: the first few are
/// logged with why, the rest counted in one line.
#[derive(Debug)]
pub struct Denials {
    plugin: Arc<str>,
    count: AtomicU32,
}

/// Denied requests logged per call; the rest are counted in one line.
pub const DENIED_LOGGED_MAX: u32 = 5;

impl Denials {
    pub(crate) fn new(plugin: Arc<str>) -> Self {
        Self { plugin, count: AtomicU32::new(0) }
    }

    pub(crate) fn plugin(&self) -> &str {
        &self.plugin
    }

    pub(crate) fn note(&self, why: &dyn std::fmt::Display) {
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        if n <= DENIED_LOGGED_MAX {
            tracing::warn!(plugin = %self.plugin, "plugin: {why}");
        }
    }

    /// At the end of the call: one line with how many were denied, when
    /// not all of them were logged.
    pub(crate) fn finish(&self) {
        let n = self.count.load(Ordering::Relaxed);
        if n > DENIED_LOGGED_MAX {
            tracing::warn!(
                plugin = %self.plugin,
                "plugin: {n} denied connections in one call; the first {DENIED_LOGGED_MAX} are logged"
            );
        }
    }
}

/// wasi:http behind the rules: a request to a destination the rules do not
/// allow fails with `HttpRequestDenied` before any lookup, and one whose
/// name resolves only to addresses the rules refuse fails the same way.
pub struct Hooks {
    pub(crate) rules: Arc<Rules>,
    pub(crate) denials: Arc<Denials>,
    pub(crate) clients: HttpClients,
    /// Requests of this call in flight (until their response body is
    /// dropped).
    pub(crate) in_flight: Arc<tokio::sync::Semaphore>,
}

/// HTTP requests one call may have in flight at once.
pub const HTTP_IN_FLIGHT_PER_CALL_MAX: usize = 16;

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
        if let Err(denial) = self.rules.check_name(&host, port) {
            self.denials.note(&format_args!("HTTP request: {denial}"));
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        let Ok(request_permit) = self.in_flight.clone().try_acquire_owned() else {
            self.denials.note(&format_args!(
                "HTTP request: refused a request beyond the {HTTP_IN_FLIGHT_PER_CALL_MAX} one call may have in flight"
            ));
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        };
        let client = if self.rules.names_exactly(&host, port) {
            self.clients.named.clone()
        } else {
            self.clients.strict.clone()
        };
        let denials = self.denials.clone();
        Box::new(async move {
            use http_body_util::BodyExt;
            let first_byte = options.and_then(|o| o.first_byte_timeout).unwrap_or(Duration::from_secs(600));
            let response = match tokio::time::timeout(first_byte, client.request(request)).await {
                Err(_) => return Err(wasmtime_wasi_http::Error::ConnectionReadTimeout),
                Ok(Err(error)) => {
                    if let Some(denial) = denied_by_connector(&error) {
                        denials.note(&format_args!("HTTP request: {}", denial.for_plugin(denials.plugin())));
                        return Err(wasmtime_wasi_http::Error::HttpRequestDenied);
                    }
                    return Err(client_error(&error));
                }
                Ok(Ok(response)) => response,
            };
            let response = response.map(|body| {
                Holding { body: body.map_err(wasmtime_wasi_http::Error::from), _permit: request_permit }.boxed_unsync()
            });
            // The pool drives the connection; nothing more to wait for.
            let done: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send> =
                Box::new(async { Ok(()) });
            Ok((response, done))
        })
    }
}

/// A response body that holds its request's place among the call's
/// requests in flight until it is dropped.
struct Holding<B> {
    body: B,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl<B: http_body::Body + Unpin> http_body::Body for Holding<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The connector's refusal in a client error, if that is what it is.
fn denied_by_connector(error: &hyper_util::client::legacy::Error) -> Option<Denial> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(denial) = e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()?.downcast_ref::<Denial>()) {
            return Some(denial.clone());
        }
        source = e.source();
    }
    None
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

/// Caps linear memory and tables; remembers that a cap was hit (the call's
/// own, or the node's budget) so the resulting trap can be reported as what
/// it is.
pub struct Limiter {
    pub(crate) memory_max: usize,
    pub(crate) exceeded: bool,
    pub(crate) node: Arc<MemoryBudget>,
    pub(crate) node_exceeded: bool,
    /// What this call holds of the node's budget.
    pub(crate) held: usize,
}

/// Linear memory of every plugin call on a node together.
#[derive(Debug)]
pub struct MemoryBudget {
    pub(crate) limit: std::sync::atomic::AtomicUsize,
    pub(crate) used: std::sync::atomic::AtomicUsize,
}

impl MemoryBudget {
    pub(crate) fn new(limit: usize) -> Self {
        Self { limit: limit.into(), used: 0.into() }
    }

    /// Takes `bytes` if they fit under the limit.
    fn take(&self, bytes: usize) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= limit)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

impl Drop for Limiter {
    fn drop(&mut self) {
        self.node.give_back(self.held);
    }
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        // The cap is the call's: every linear memory of the instance counts.
        let more = desired.saturating_sub(current);
        if self.held + more > self.memory_max {
            self.exceeded = true;
            return Err(wasmtime::Error::msg("memory limit exceeded"));
        }
        if !self.node.take(more) {
            self.node_exceeded = true;
            return Err(wasmtime::Error::msg("the node's plugin memory budget is in use"));
        }
        self.held += more;
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

fn timeout_of(millis: u32) -> Duration {
    Duration::from_millis(u64::from(millis.clamp(1, 120_000)))
}

/// Connects to `host:port` if the rules allow it: the name is checked
/// before any lookup, then resolved once, and only the addresses that pass
/// are connected to.
async fn dial(rules: &Rules, denials: &Denials, host: &str, port: u16, timeout: Duration) -> Result<TcpStream, String> {
    let addrs = match tokio::time::timeout(timeout, rules.resolve(host, port)).await {
        Err(_) => return Err(format!("resolve {host}: timeout after {timeout:?}")),
        Ok(Err(Unreachable::Denied(denial))) => {
            denials.note(&denial);
            return Err(denial.to_string());
        }
        Ok(Err(Unreachable::Lookup(why))) => return Err(why),
        Ok(Ok(addrs)) => addrs,
    };
    let mut last = format!("connect {host}:{port}: no addresses");
    for addr in addrs {
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => last = format!("connect {host}:{port} ({addr}): {e}"),
            Err(_) => last = format!("connect {host}:{port} ({addr}): timeout after {timeout:?}"),
        }
    }
    Err(last)
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

/// The qu:plugin imports (log, system, tls-inspect, tcp), written once for
/// every contract version: each version's module brings its generated
/// `log`, `system`, `tls_inspect`, `types` and `tcp` into scope and
/// expands this.
macro_rules! imports {
    () => {
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
                self.take_socket()?;
                let stream = dial(&self.rules, &self.denials, &host, port, timeout).await?;
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
                self.take_socket()?;
                let stream = dial(&self.rules, &self.denials, &host, port, timeout).await?;
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
    };
}

mod v1 {
    use super::*;
    use crate::bindings::checker::qu::plugin::{log, system, tls_inspect, types};
    use crate::bindings::sink::qu::plugin::tcp;
    imports!();
}

mod v2 {
    use super::*;
    use crate::bindings::v2::checker::qu::plugin::{log, system, tls_inspect, types};
    use crate::bindings::v2::sink::qu::plugin::tcp;
    imports!();
}
