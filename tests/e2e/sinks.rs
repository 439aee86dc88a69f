//! The built-in sinks for third-party services, each a real WebAssembly
//! component from plugins/sinks, against a local stand-in that behaves like
//! the service: its request shape and authentication, its success body,
//! its 429 with its own retry hint (a header or a body field), its error
//! bodies, and its deduplication (Google Chat's `messageId`, Matrix's
//! `txnId`, PagerDuty's `dedup_key`, Opsgenie's `alias`). `qu alert test`
//! through each, then a real DOWN and RECOVERED through all of them at once
//! with every first attempt rate limited.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use qu_tests::{Cluster, StandIn, StandInAnswer, StandInRequest, eventually};

/// What the stand-ins do: answer as the service does on success, or with
/// its error, or rate-limit the first attempt of each delivery.
const OK: u8 = 0;
const ERROR: u8 = 1;
const LIMIT_FIRST: u8 = 2;

struct Sink {
    kind: &'static str,
    /// `qu alert add` flags, given the stand-in's URL.
    flags: fn(&str) -> Vec<String>,
    /// The service's success answer.
    ok: fn(&StandInRequest) -> StandInAnswer,
    /// Its 429, with a retry hint of 1 s where the service gives one.
    limited: fn() -> StandInAnswer,
    /// One of its errors, and the words `qu alert test` must show.
    error: fn() -> (StandInAnswer, &'static str),
    /// What a request must look like (panics with the reason).
    shape: fn(&StandInRequest),
    /// A delivery's identity in the service, for "once inside the service".
    identity: fn(&StandInRequest) -> String,
}

fn json(status: u16, body: serde_json::Value) -> StandInAnswer {
    (status, vec![("content-type".into(), "application/json".into())], body.to_string())
}

fn text(status: u16, body: &str) -> StandInAnswer {
    (status, vec![("content-type".into(), "text/plain".into())], body.into())
}

fn retry_after(mut answer: StandInAnswer, header: &str) -> StandInAnswer {
    answer.1.push((header.into(), "1".into()));
    answer
}

fn v(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

const PUSHOVER_KEY: &str = "secretsecretsecretsecretsecret";
const PD_KEY: &str = "secretsecretsecretsecretsecret32";

fn sinks() -> Vec<Sink> {
    vec![
        Sink {
            kind: "slack",
            flags: |u| v(&["--url", &format!("{u}/services/T0/B0/secret"), "--set", "relay=true"]),
            ok: |_| text(200, "ok"),
            limited: || retry_after(text(429, "rate_limited"), "retry-after"),
            error: || (text(404, "channel_not_found"), "Slack answered 404: channel_not_found"),
            shape: |r| {
                assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/services/T0/B0/secret"));
                assert!(r.json()["text"].as_str().unwrap().starts_with('*'), "{}", r.body);
            },
            identity: |r| r.json()["text"].as_str().unwrap_or("").to_string(),
        },
        Sink {
            kind: "teams",
            flags: |u| {
                v(&[
                    "--url",
                    &format!("{u}/workflows/abc/triggers/manual/paths/invoke?sig=secret"),
                    "--set",
                    "relay=true",
                ])
            },
            ok: |_| text(202, ""),
            limited: || {
                retry_after(
                    json(
                        429,
                        serde_json::json!({"error": {"code": "TooManyRequests", "message": "Rate limit is exceeded."}}),
                    ),
                    "retry-after",
                )
            },
            error: || {
                let body = serde_json::json!({"error": {"code": "InvalidRequestContent", "message": "The input body for trigger 'manual' of type 'Request' must be of type JSON"}});
                (json(400, body), "Teams answered 400: The input body for trigger 'manual'")
            },
            shape: |r| {
                assert!(r.path.starts_with("/workflows/abc/") && r.path.ends_with("sig=secret"), "{}", r.path);
                assert_eq!(r.json()["attachments"][0]["contentType"], "application/vnd.microsoft.card.adaptive");
            },
            identity: |r| r.json()["attachments"][0]["content"]["body"][0]["text"].as_str().unwrap_or("").to_string(),
        },
        Sink {
            kind: "mattermost",
            flags: |u| v(&["--url", &format!("{u}/hooks/secret"), "--set", "channel=ops"]),
            ok: |_| text(200, "ok"),
            limited: || {
                retry_after(json(429, serde_json::json!({"message": "too many requests"})), "x-ratelimit-reset")
            },
            error: || {
                let body = serde_json::json!({"id": "web.incoming_webhook.disabled.app_error", "message": "Incoming webhooks have been disabled by the system admin.", "status_code": 501});
                (json(403, body), "Mattermost answered 403: Incoming webhooks have been disabled")
            },
            shape: |r| {
                assert_eq!(r.path, "/hooks/secret");
                assert_eq!(r.json()["channel"], "ops");
            },
            identity: |r| r.json()["text"].as_str().unwrap_or("").to_string(),
        },
        Sink {
            kind: "googlechat",
            flags: |u| v(&["--url", &format!("{u}/v1/spaces/AAA/messages?key=k&token=secret"), "--set", "relay=true"]),
            // The service's own deduplication: a messageId it has is 409.
            ok: |_| json(200, serde_json::json!({"name": "spaces/AAA/messages/1"})),
            limited: || {
                json(
                    429,
                    serde_json::json!({"error": {"code": 429, "message": "Resource has been exhausted", "status": "RESOURCE_EXHAUSTED"}}),
                )
            },
            error: || {
                let body = serde_json::json!({"error": {"code": 400, "message": "Invalid JSON payload received.", "status": "INVALID_ARGUMENT"}});
                (json(400, body), "Google Chat answered 400: Invalid JSON payload received.")
            },
            shape: |r| {
                assert!(r.path.starts_with("/v1/spaces/AAA/messages?key=k&token=secret&"), "{}", r.path);
                assert!(r.path.contains("&messageId=client-"), "{}", r.path);
            },
            identity: |r| r.path.split("messageId=").nth(1).unwrap_or("").to_string(),
        },
        Sink {
            kind: "telegram",
            flags: |u| v(&["--set", "token=123456:secret", "--set", "chat_id=-1001", "--set", &format!("api_url={u}")]),
            ok: |_| json(200, serde_json::json!({"ok": true, "result": {"message_id": 1}})),
            limited: || {
                json(
                    429,
                    serde_json::json!({"ok": false, "error_code": 429, "description": "Too Many Requests: retry after 1", "parameters": {"retry_after": 1}}),
                )
            },
            error: || {
                let body =
                    serde_json::json!({"ok": false, "error_code": 400, "description": "Bad Request: chat not found"});
                (json(400, body), "Telegram answered 400: Bad Request: chat not found")
            },
            shape: |r| {
                assert_eq!(r.path, "/bot123456:secret/sendMessage");
                assert_eq!(r.json()["chat_id"], -1001);
            },
            identity: |r| r.json()["text"].as_str().unwrap_or("").to_string(),
        },
        Sink {
            kind: "ntfy",
            flags: |u| v(&["--url", &format!("{u}/qu-alerts"), "--set", "token=tk_secret"]),
            ok: |_| json(200, serde_json::json!({"id": "abc", "event": "message", "topic": "qu-alerts"})),
            limited: || {
                json(429, serde_json::json!({"code": 42901, "http": 429, "error": "limit reached: too many requests"}))
            },
            error: || {
                let body = serde_json::json!({"code": 40301, "http": 403, "error": "forbidden"});
                (json(403, body), "ntfy answered 403: forbidden")
            },
            shape: |r| {
                assert_eq!(r.path, "/qu-alerts");
                assert_eq!(r.header("authorization"), Some("Bearer tk_secret"));
                assert!(
                    r.header("title").is_some_and(|t| t.contains("DOWN") || t.contains("RECOVERED")),
                    "{:?}",
                    r.headers
                );
            },
            identity: |r| r.header("title").unwrap_or("").to_string(),
        },
        Sink {
            kind: "gotify",
            flags: |u| v(&["--url", u, "--set", "token=secret"]),
            ok: |_| json(200, serde_json::json!({"id": 1, "appid": 1})),
            limited: || retry_after(json(503, serde_json::json!({"error": "Service Unavailable"})), "retry-after"),
            error: || {
                let body = serde_json::json!({"error": "Unauthorized", "errorCode": 401, "errorDescription": "you need to provide a valid access token or user credentials to access this api"});
                (json(401, body), "Gotify answered 401: you need to provide a valid access token")
            },
            shape: |r| {
                assert_eq!(r.path, "/message");
                assert_eq!(r.header("x-gotify-key"), Some("secret"));
            },
            identity: |r| r.json()["title"].as_str().unwrap_or("").to_string(),
        },
        Sink {
            kind: "pushover",
            flags: |u| {
                v(&[
                    "--set",
                    &format!("token={PUSHOVER_KEY}"),
                    "--set",
                    &format!("user_key={PUSHOVER_KEY}"),
                    "--set",
                    &format!("api_url={u}"),
                ])
            },
            ok: |_| json(200, serde_json::json!({"status": 1, "request": "abc"})),
            limited: || {
                retry_after(json(429, serde_json::json!({"status": 0, "errors": ["too many requests"]})), "retry-after")
            },
            error: || {
                let body = serde_json::json!({"user": "invalid", "errors": ["user identifier is not a valid user, group, or subscribed user key"], "status": 0});
                (json(400, body), "Pushover answered 400: user identifier is not a valid user")
            },
            shape: |r| {
                assert_eq!(r.path, "/1/messages.json");
                assert_eq!(r.json()["user"], PUSHOVER_KEY);
            },
            identity: |r| r.json()["title"].as_str().unwrap_or("").to_string(),
        },
        Sink {
            kind: "pagerduty",
            flags: |u| v(&["--set", &format!("routing_key={PD_KEY}"), "--set", &format!("api_url={u}")]),
            ok: |r| {
                json(
                    202,
                    serde_json::json!({"status": "success", "message": "Event processed", "dedup_key": r.json()["dedup_key"]}),
                )
            },
            limited: || {
                json(
                    429,
                    serde_json::json!({"status": "throttle event", "message": "Requests for this service are arriving too quickly."}),
                )
            },
            error: || {
                let body = serde_json::json!({"status": "invalid event", "message": "Event object is invalid", "errors": ["'routing_key' is invalid"]});
                (json(400, body), "PagerDuty answered 400: Event object is invalid 'routing_key' is invalid")
            },
            shape: |r| {
                assert_eq!(r.path, "/v2/enqueue");
                assert_eq!(r.json()["routing_key"], PD_KEY);
                assert!(matches!(r.json()["event_action"].as_str(), Some("trigger" | "resolve")), "{}", r.body);
            },
            identity: |r| format!("{}:{}", r.json()["event_action"], r.json()["dedup_key"]),
        },
        Sink {
            kind: "opsgenie",
            flags: |u| v(&["--set", "api_key=secret", "--set", &format!("api_url={u}")]),
            ok: |_| {
                json(202, serde_json::json!({"result": "Request will be processed", "took": 0.01, "requestId": "r1"}))
            },
            limited: || {
                json(
                    429,
                    serde_json::json!({"message": "You are making too many requests!", "took": 0.0, "requestId": "r2"}),
                )
            },
            error: || {
                let body = serde_json::json!({"message": "Key format is not valid!", "took": 0.0, "requestId": "r3"});
                (json(422, body), "Opsgenie answered 422: Key format is not valid!")
            },
            shape: |r| {
                assert_eq!(r.header("authorization"), Some("GenieKey secret"));
                assert!(
                    r.path == "/v2/alerts"
                        || (r.path.starts_with("/v2/alerts/qu-") && r.path.ends_with("/close?identifierType=alias")),
                    "{}",
                    r.path
                );
            },
            identity: |r| format!("{}{}", r.path, r.json()["alias"]),
        },
        Sink {
            kind: "matrix",
            flags: |u| {
                v(&[
                    "--set",
                    &format!("homeserver={u}"),
                    "--set",
                    "access_token=syt_secret",
                    "--set",
                    "room_id=!room:example.org",
                ])
            },
            // The homeserver's deduplication: the same txnId is the same event.
            ok: |r| json(200, serde_json::json!({"event_id": format!("${}", r.path.rsplit('/').next().unwrap_or(""))})),
            limited: || {
                json(
                    429,
                    serde_json::json!({"errcode": "M_LIMIT_EXCEEDED", "error": "Too Many Requests", "retry_after_ms": 1000}),
                )
            },
            error: || {
                let body = serde_json::json!({"errcode": "M_FORBIDDEN", "error": "User @bot:example.org not in room !room:example.org"});
                (json(403, body), "Matrix answered 403: M_FORBIDDEN User @bot:example.org not in room")
            },
            shape: |r| {
                assert_eq!(r.method, "PUT");
                assert!(
                    r.path.starts_with("/_matrix/client/v3/rooms/%21room%3Aexample.org/send/m.room.message/qu-"),
                    "{}",
                    r.path
                );
                assert_eq!(r.header("authorization"), Some("Bearer syt_secret"));
                assert_eq!(r.json()["msgtype"], "m.text");
            },
            identity: |r| r.path.rsplit('/').next().unwrap_or("").to_string(),
        },
    ]
}

fn start(sink: &Sink, mode: Arc<AtomicU8>) -> StandIn {
    let (ok, limited, error) = (sink.ok, sink.limited, sink.error);
    let identity = sink.identity;
    StandIn::start(move |request, before| match mode.load(Ordering::SeqCst) {
        ERROR => error().0,
        // The first attempt of each delivery is rate limited.
        LIMIT_FIRST if !before.iter().any(|b| identity(b) == identity(request)) => limited(),
        _ => ok(request),
    })
}

#[test]
fn every_service_sink_delivers_retries_as_its_service_asks_and_reports_its_errors() {
    let cluster = Cluster::new(1, "2m");
    let node = &cluster.nodes[0];
    let sinks = sinks();
    let modes: Vec<Arc<AtomicU8>> = sinks.iter().map(|_| Arc::new(AtomicU8::new(OK))).collect();
    let standins: Vec<StandIn> = sinks.iter().zip(&modes).map(|(s, m)| start(s, m.clone())).collect();
    let listed = node.qu_ok(&["plugin", "list"]);
    for sink in &sinks {
        assert!(listed.contains(sink.kind), "`qu plugin list` lacks the built-in {}:\n{listed}", sink.kind);
    }

    // qu alert test through each: delivered, in the service's shape.
    for (sink, standin) in sinks.iter().zip(&standins) {
        let mut args = v(&["alert", "add", sink.kind, sink.kind]);
        args.extend((sink.flags)(&standin.url));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        node.qu_ok(&refs);
        let out = node.qu_ok(&["alert", "test", sink.kind]);
        assert!(out.starts_with(&format!("{}: delivered", sink.kind)), "{out}");
        let got = standin.requests();
        assert_eq!(got.len(), 1, "{}: {got:#?}", sink.kind);
        (sink.shape)(&got[0]);
    }
    let list = node.qu_ok(&["alert", "list", "--json"]);
    assert!(!list.contains("secret"), "a secret shown by `qu alert list`:\n{list}");

    // The service's errors, in its words, and permanent.
    for ((sink, mode), _) in sinks.iter().zip(&modes).zip(&standins) {
        mode.store(ERROR, Ordering::SeqCst);
        let out = node.qu(&["alert", "test", sink.kind]);
        let said = String::from_utf8_lossy(&out.stdout);
        let want = (sink.error)().1;
        assert!(!out.status.success() && said.contains(want), "{}: want {want:?} in {said}", sink.kind);
        assert!(!said.contains("secret"), "{said}");
        mode.store(LIMIT_FIRST, Ordering::SeqCst);
    }

    // A real DOWN and RECOVERED through all of them, each first attempt
    // rate limited: each delivery is retried as the service asked, and
    // arrives once.
    for standin in &standins {
        standin.got.lock().unwrap().clear();
    }
    node.qu_ok(&["cluster", "settings", "set", "announce_first_up", "false"]);
    let target = qu_tests::http_target();
    let names = sinks.iter().map(|s| s.kind).collect::<Vec<_>>().join(",");
    node.qu_ok(&["check", "add", "http", "web", &target.url, "--interval", "1s", "--alerts", &names]);
    node.wait_status("web is up", |s| s["checks"][0]["state"] == "up");
    target.up.store(false, Ordering::SeqCst);
    node.wait_status("web is down", |s| s["checks"][0]["state"] == "down");
    let delivered = || {
        let list: serde_json::Value = serde_json::from_str(&node.qu_ok(&["alert", "list", "--json"])).unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .all(|a| a["pending"] == 0 && a["last"]["verb"] == "DOWN" && a["last"]["status"] == "delivered")
    };
    eventually(Duration::from_secs(60), "every DOWN delivered", || delivered().then_some(()));
    target.up.store(true, Ordering::SeqCst);
    node.wait_status("web is up again", |s| s["checks"][0]["state"] == "up");
    eventually(Duration::from_secs(60), "every RECOVERED delivered", || {
        let list: serde_json::Value = serde_json::from_str(&node.qu_ok(&["alert", "list", "--json"])).unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .all(|a| a["pending"] == 0 && a["last"]["verb"] == "RECOVERED" && a["last"]["status"] == "delivered")
            .then_some(())
    });
    for (sink, standin) in sinks.iter().zip(&standins) {
        let got = standin.requests();
        let accepted: Vec<&StandInRequest> = got.iter().filter(|r| (200..300).contains(&r.status)).collect();
        assert_eq!(accepted.len(), 2, "{}: one DOWN and one RECOVERED accepted: {got:#?}", sink.kind);
        for r in &got {
            (sink.shape)(r);
        }
        let limited: Vec<&StandInRequest> = got.iter().filter(|r| r.status == 429 || r.status == 503).collect();
        assert_eq!(limited.len(), 2, "{}: each first attempt was limited: {got:#?}", sink.kind);
        for first in &limited {
            let retry = got.iter().find(|r| r.at > first.at && (sink.identity)(r) == (sink.identity)(first)).unwrap();
            assert!(
                retry.at.duration_since(first.at) >= Duration::from_millis(900),
                "{}: retried before the hint",
                sink.kind
            );
        }
    }
    // Inside the services, one incident per outage.
    let pd = &standins[sinks.iter().position(|s| s.kind == "pagerduty").unwrap()].requests();
    let keys: std::collections::BTreeSet<String> =
        pd.iter().map(|r| r.json()["dedup_key"].as_str().unwrap_or("").to_string()).collect();
    assert_eq!(keys.len(), 1, "the trigger and the resolve name one PagerDuty incident: {keys:?}");
    let og = &standins[sinks.iter().position(|s| s.kind == "opsgenie").unwrap()].requests();
    let alias = og.iter().find_map(|r| r.json()["alias"].as_str().map(str::to_string)).unwrap();
    assert!(og.iter().any(|r| r.path == format!("/v2/alerts/{alias}/close?identifierType=alias")), "{og:#?}");
}
