//! qu's own HTTP listener (node.yaml `http_listen`): `GET /metrics`. Each
//! scrape asks the event loop for its text (one event, like a `qu status`);
//! the listener holds no state. Connections are capped and time-bounded:
//! it has no authentication, so it belongs on loopback or a private
//! network (docs/operations.md, "Metrics").

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::daemon::{ControlEvent, Event};

/// Connections served at once; beyond, a new one is closed at once.
const CONNECTIONS_MAX: usize = 32;
/// A connection (keep-alive included) lasts at most this long.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// What Prometheus asks for (and the encoder writes).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// What anything else gets: the classic text format.
const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

pub(crate) async fn serve(listener: TcpListener, events: mpsc::Sender<Event>) {
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "http: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
        let events = events.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let io = hyper_util::rt::TokioIo::new(stream);
            let service = hyper::service::service_fn(move |request| answer(request, events.clone()));
            let connection = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
        });
    }
}

fn text(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

async fn answer(request: Request<Incoming>, events: mpsc::Sender<Event>) -> Result<Response<Full<Bytes>>, Infallible> {
    let plain = "text/plain; charset=utf-8";
    if request.uri().path() != "/metrics" {
        return Ok(text(StatusCode::NOT_FOUND, plain, "not found; this listener serves /metrics\n".into()));
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, plain, "GET /metrics\n".into());
        response.headers_mut().insert(hyper::header::ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD"));
        return Ok(response);
    }
    let openmetrics = request
        .headers()
        .get_all(hyper::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let (reply, answer) = oneshot::channel();
    let unavailable = || text(StatusCode::SERVICE_UNAVAILABLE, plain, "the node is shutting down\n".into());
    if events.send(Event::Control(ControlEvent::Metrics { reply })).await.is_err() {
        return Ok(unavailable());
    }
    Ok(match answer.await {
        Ok(body) if openmetrics => text(StatusCode::OK, OPENMETRICS, body),
        Ok(body) => text(StatusCode::OK, CLASSIC, crate::metrics::to_classic(&body)),
        Err(_) => unavailable(),
    })
}
