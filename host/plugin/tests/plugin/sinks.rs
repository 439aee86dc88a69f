//! The built-in sinks against real servers on loopback: an HTTP receiver
//! for `webhook`, a stand-in that behaves like Discord's webhook API
//! (JSON `content`, 204, 429 with `retry_after`, 400 over 2,000
//! characters) for `discord`, and aiosmtpd (STARTTLS with a test CA,
//! AUTH) for `email`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use qu_plugin::{AlertEvent, CallError, Limits, Plugin, PluginError, Runtime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

async fn built_in(runtime: &Arc<Runtime>, name: &str) -> Arc<Plugin> {
    let (_, bytes) = qu_plugin::BUILT_IN.iter().find(|(n, _)| *n == name).expect("built in");
    runtime.load(Some(name), Arc::from(*bytes), Vec::new(), Limits::default()).await.unwrap()
}

fn qu_free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn settings(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn event(body: &str) -> AlertEvent {
    AlertEvent {
        check_id: "c1".into(),
        check_name: "web".into(),
        check_type: "http".into(),
        check_target: "https://example.com/".into(),
        from_state: "up".into(),
        to_state: "down".into(),
        verb: "DOWN".into(),
        ok: 1,
        failing: 2,
        total: 3,
        detail: "status 503".into(),
        subject: "DOWN: web — café".into(),
        body: body.into(),
        idempotency_key: "3.14/a1".into(),
        timestamp_ms: 1_795_611_600_000,
        master: "n1".into(),
        test: false,
    }
}

/// One request as a receiver saw it.
#[derive(Debug, Clone)]
struct Seen {
    head: String,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// An HTTP/1.1 server that answers each request with what `answer` says
/// (status line and extra headers, body), recording every request.
async fn receiver(answer: impl Fn(&Seen) -> (String, String) + Send + Sync + 'static) -> (u16, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let (log, answer) = (seen.clone(), Arc::new(answer));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (log, answer) = (log.clone(), answer.clone());
            tokio::spawn(async move {
                loop {
                    let mut buffer = Vec::new();
                    let mut chunk = [0u8; 8192];
                    let head_end = loop {
                        let Ok(n) = stream.read(&mut chunk).await else { return };
                        if n == 0 {
                            return;
                        }
                        buffer.extend_from_slice(&chunk[..n]);
                        if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
                    let length = Seen { head: head.clone(), body: vec![] }
                        .header("content-length")
                        .and_then(|v| v.parse::<usize>().ok())
                        .unwrap_or(0);
                    while buffer.len() < head_end + length {
                        let Ok(n) = stream.read(&mut chunk).await else { return };
                        if n == 0 {
                            return;
                        }
                        buffer.extend_from_slice(&chunk[..n]);
                    }
                    let request = Seen { head, body: buffer[head_end..head_end + length].to_vec() };
                    let (status, body) = answer(&request);
                    log.lock().unwrap().push(request);
                    if status == "hang" {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        return;
                    }
                    let response = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                    if stream.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, seen)
}

fn transient(result: Result<(), CallError>) -> (String, Option<Duration>) {
    match result {
        Err(CallError::Plugin { error: PluginError::Transient { message, retry_after }, .. }) => (message, retry_after),
        other => panic!("expected a transient failure, got {other:?}"),
    }
}

fn permanent(result: Result<(), CallError>) -> String {
    match result {
        Err(CallError::Plugin { error: PluginError::Permanent(message), .. }) => message,
        other => panic!("expected a permanent failure, got {other:?}"),
    }
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> String {
    use std::process::{Command, Stdio};
    // Verified independently of the plugin's code: Python's hmac module.
    let mut child = Command::new("python3")
        .args(["-c", "import hmac,hashlib,sys; k=sys.argv[1].encode(); print(hmac.new(k, sys.stdin.buffer.read(), hashlib.sha256).hexdigest())", std::str::from_utf8(key).unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), message).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_delivers_signed_json_and_classifies_failures() {
    let runtime = Runtime::new(None).unwrap();
    let plugin = built_in(&runtime, "webhook").await;
    let (port, seen) = receiver(|r| match r.head.split_whitespace().nth(1).unwrap_or("") {
        "/ok" => ("204 No Content".into(), String::new()),
        "/busy" => ("503 Service Unavailable\r\nretry-after: 7".into(), "later".into()),
        "/slow" => ("429 Too Many Requests".into(), String::new()),
        "/gone" => ("404 Not Found".into(), "no such hook".into()),
        "/hang" => ("hang".into(), String::new()),
        _ => ("500 Internal Server Error".into(), String::new()),
    })
    .await;
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let ok = url("/ok");
    let config =
        settings(&[("url", &ok), ("signing_secret", "s3cret"), ("headers", "X-Team: ops\nAuthorization: Bearer t")]);
    runtime.validate_sink(&plugin, &config).await.unwrap();
    runtime.send(&plugin, &event("body text"), &config).await.unwrap();
    let request = seen.lock().unwrap()[0].clone();
    assert!(request.head.starts_with("POST /ok HTTP/1.1"), "{}", request.head);
    assert_eq!(request.header("idempotency-key").as_deref(), Some("3.14/a1"));
    assert_eq!(request.header("x-team").as_deref(), Some("ops"));
    assert_eq!(request.header("authorization").as_deref(), Some("Bearer t"), "configured headers arrive");
    assert_eq!(request.header("content-type").as_deref(), Some("application/json"));
    let signature = request.header("x-qu-signature").unwrap();
    assert_eq!(signature, format!("sha256={}", hmac_sha256(b"s3cret", &request.body)), "verifiable signature");
    let json: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(json["version"], 1);
    assert_eq!(json["check"]["name"], "web");
    assert_eq!(json["transition"], serde_json::json!({"id": "3.14", "from": "up", "to": "down", "verb": "DOWN"}));
    assert_eq!(json["counts"], serde_json::json!({"ok": 1, "failing": 2, "total": 3}));
    assert_eq!((json["subject"].as_str(), json["body"].as_str()), (Some("DOWN: web — café"), Some("body text")));

    let busy = transient(runtime.send(&plugin, &event(""), &settings(&[("url", &url("/busy"))])).await);
    assert_eq!(busy, ("status 503: later".to_string(), Some(Duration::from_secs(7))), "Retry-After honoured");
    let slow = transient(runtime.send(&plugin, &event(""), &settings(&[("url", &url("/slow"))])).await);
    assert_eq!(slow, ("status 429".to_string(), None));
    assert_eq!(
        permanent(runtime.send(&plugin, &event(""), &settings(&[("url", &url("/gone"))])).await),
        "status 404: no such hook"
    );
    let hang = runtime.send(&plugin, &event(""), &settings(&[("url", &url("/hang")), ("timeout", "500ms")])).await;
    let (message, _) = transient(hang);
    assert_eq!(message, "timeout");

    let bad = runtime.validate_sink(&plugin, &settings(&[("url", "ftp://x")])).await.unwrap_err();
    assert!(bad.to_string().contains("expected an http:// or https:// URL"), "{bad}");
    let bad = runtime.validate_sink(&plugin, &settings(&[("url", &ok), ("headers", "no colon")])).await.unwrap_err();
    assert!(bad.to_string().contains("is not `Name: value`"), "{bad}");
}

/// Behaves like Discord's webhook API for what the sink uses.
async fn discord_stand_in(rate_limit_first: usize) -> (u16, Arc<Mutex<Vec<Seen>>>) {
    let calls = Arc::new(Mutex::new(0usize));
    receiver(move |r| {
        let mut n = calls.lock().unwrap();
        *n += 1;
        let json: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
        let content = json["content"].as_str().unwrap_or("");
        if *n <= rate_limit_first {
            return (
                "429 Too Many Requests\r\ncontent-type: application/json".into(),
                r#"{"message": "You are being rate limited.", "retry_after": 1.25, "global": false}"#.into(),
            );
        }
        if content.is_empty() || content.chars().count() > 2000 {
            return ("400 Bad Request".into(), r#"{"content": ["Must be 2000 or fewer in length."]}"#.into());
        }
        ("204 No Content".into(), String::new())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discord_posts_content_cut_at_2000_characters_and_honours_429() {
    let runtime = Runtime::new(None).unwrap();
    let plugin = built_in(&runtime, "discord").await;
    let (port, seen) = discord_stand_in(1).await;
    let config = settings(&[("webhook", &format!("http://127.0.0.1:{port}/api/webhooks/1/token"))]);
    let (message, after) = transient(runtime.send(&plugin, &event("short"), &config).await);
    assert_eq!((message.as_str(), after), ("rate limited by Discord (429)", Some(Duration::from_millis(1250))));
    runtime.send(&plugin, &event(&"x".repeat(5000)), &config).await.unwrap();
    let sent = seen.lock().unwrap().last().cloned().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&sent.body).unwrap();
    let content = json["content"].as_str().unwrap();
    assert_eq!(content.chars().count(), 2000);
    assert!(content.starts_with("**DOWN: web — café**\nxxx") && content.ends_with('…'), "{}", &content[..40]);

    // A Discord that does not answer: a timeout, worth retrying.
    let (silent, _) = receiver(|_| ("hang".into(), String::new())).await;
    let config = settings(&[("webhook", &format!("http://127.0.0.1:{silent}/api/webhooks/1/t")), ("timeout", "500ms")]);
    let (message, _) = transient(runtime.send(&plugin, &event("x"), &config).await);
    assert_eq!(message, "timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_to_a_server_that_never_greets_times_out() {
    let runtime = Runtime::new(None).unwrap();
    let plugin = built_in(&runtime, "email").await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream); // accepted, never answered
        }
    });
    let config = settings(&[
        ("host", "127.0.0.1"),
        ("port", &port),
        ("tls", "none"),
        ("from", "qu@example.com"),
        ("to", "oncall@example.com"),
        ("timeout", "500ms"),
    ]);
    let started = std::time::Instant::now();
    let (message, _) = transient(runtime.send(&plugin, &event("x"), &config).await);
    assert!(message.starts_with("read: timeout"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(5), "every step has a timeout");
}

const SMTP_SERVER: &str = r#"
import asyncio, os, ssl, sys
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

out, cert, key, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

class Save:
    async def handle_DATA(self, server, session, envelope):
        name = os.path.join(out, "%d.eml" % len(os.listdir(out)))
        with open(name + ".part", "wb") as f:
            f.write(("X-Envelope-From: %s\r\nX-Envelope-To: %s\r\n" % (envelope.mail_from, ",".join(envelope.rcpt_tos))).encode())
            f.write(envelope.original_content)
        os.rename(name + ".part", name)
        return "250 OK"

def auth(server, session, envelope, mechanism, data):
    ok = isinstance(data, LoginPassword) and data.login == b"alerts" and data.password == b"p4ss"
    return AuthResult(success=ok, handled=False)

context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(cert, key)
controller = Controller(Save(), hostname="127.0.0.1", port=port, tls_context=context, require_starttls=True,
                        authenticator=auth, auth_required=True, server_hostname="localhost")
controller.start()
print("READY", flush=True)
try:
    sys.stdin.read()
finally:
    controller.stop()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_over_starttls_with_auth_to_a_real_smtp_server() {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &rcgen::Issuer::from_params(&ca_params, &ca_key))
        .unwrap();
    let (cert_path, key_path, script, mail) =
        (dir.path().join("cert.pem"), dir.path().join("key.pem"), dir.path().join("smtp.py"), dir.path().join("mail"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    std::fs::write(&script, SMTP_SERVER).unwrap();
    std::fs::create_dir(&mail).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut server = tokio::process::Command::new("python3")
        .arg(&script)
        .args([mail.to_str().unwrap(), cert_path.to_str().unwrap(), key_path.to_str().unwrap(), &port.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 with aiosmtpd (.ci/setup installs it)");
    let mut ready = String::new();
    let mut stdout = server.stdout.take().unwrap();
    let mut byte = [0u8; 1];
    while !ready.ends_with('\n') && stdout.read(&mut byte).await.unwrap() == 1 {
        ready.push(byte[0] as char);
    }
    assert_eq!(ready.trim(), "READY");

    let runtime = Runtime::new(None).unwrap();
    let plugin = built_in(&runtime, "email").await;
    let ca_pem = ca.pem();
    let port_text = port.to_string();
    let base = [
        ("host", "localhost"),
        ("port", port_text.as_str()),
        ("from", "qu@example.com"),
        ("to", "oncall@example.com, boss@example.com"),
        ("user", "alerts"),
        ("ca", ca_pem.as_str()),
    ];
    let mut good: Vec<(&str, &str)> = base.to_vec();
    good.push(("password", "p4ss"));
    runtime.validate_sink(&plugin, &settings(&good)).await.unwrap();
    runtime.send(&plugin, &event("line one\n.line two starts with a dot"), &settings(&good)).await.unwrap();
    let message = std::fs::read_to_string(mail.join("0.eml")).unwrap();
    assert!(message.contains("X-Envelope-To: oncall@example.com,boss@example.com"), "{message}");
    for header in
        ["Date: Wed, 25 Nov 2026 13:00:00 +0000", "From: qu@example.com", "To: oncall@example.com, boss@example.com"]
    {
        assert!(message.contains(header), "{header} in\n{message}");
    }
    assert!(message.contains("Subject: =?UTF-8?B?"), "RFC 2047 subject:\n{message}");
    assert!(message.contains("Message-ID: <3.14-a1@example.com>"), "{message}");
    // Python decodes the MIME message: the subject and body survive intact.
    let decoded = std::process::Command::new("python3")
        .args(["-c", "import email,sys; from email import policy; m=email.message_from_file(open(sys.argv[1]), policy=policy.default); print(m['subject']); print(m.get_content(), end='')", mail.join("0.eml").to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&decoded.stdout), "DOWN: web — café\nline one\n.line two starts with a dot");

    // A wrong password is the server's 535: permanent.
    let mut wrong: Vec<(&str, &str)> = base.to_vec();
    wrong.push(("password", "nope"));
    let refused = permanent(runtime.send(&plugin, &event("x"), &settings(&wrong)).await);
    assert!(refused.starts_with("AUTH PLAIN: the server answered 535"), "{refused}");
    assert!(!refused.contains("nope"), "no password in errors");
    // Without our CA the server's certificate is not trusted: retrying
    // would not help, so the delivery fails at once.
    let untrusted: Vec<(&str, &str)> = good.iter().copied().filter(|(k, _)| *k != "ca").collect();
    let message = permanent(runtime.send(&plugin, &event("x"), &settings(&untrusted)).await);
    assert!(message.contains("TLS") && message.contains("certificate"), "{message}");
    // A server that is away is worth retrying.
    let mut away: Vec<(&str, &str)> = good.clone();
    let closed = qu_free_port().to_string();
    away.retain(|(k, _)| *k != "port");
    away.push(("port", closed.as_str()));
    let (message, _) = transient(runtime.send(&plugin, &event("x"), &settings(&away)).await);
    assert!(message.contains("connect"), "{message}");
    // Plain SMTP to a remote host needs an explicit opt-in.
    let plain = runtime
        .validate_sink(
            &plugin,
            &settings(&[("host", "mail.example.com"), ("tls", "none"), ("from", "a@b.c"), ("to", "d@e.f")]),
        )
        .await
        .unwrap_err();
    assert!(plain.to_string().contains("allow_plain_remote=true"), "{plain}");
    drop(server.stdin.take());
    let _ = server.wait().await;
}

/// Check calls and sink calls have slots of their own: with 200 slow check
/// plugins running or waiting for a slot (every check slot held by a call
/// waiting on a server that never answers), an alert goes out as fast as
/// on an idle node — before any of those checks has ended. (Spinning
/// checks, which take CPU rather than slots, are `a_spinning_plugin_...`
/// in the sandbox tests.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_check_plugins_do_not_hold_up_an_alert() {
    let runtime = Runtime::new(None).unwrap();
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let path = std::path::Path::new(qu_plugin::ARTIFACTS).join("hostile.wasm");
    let allow = vec![format!("127.0.0.1:{silent_port}")];
    let hostile = runtime
        .load(Some("hostile"), Arc::from(std::fs::read(&path).unwrap()), allow, Limits::default())
        .await
        .unwrap();
    let webhook = built_in(&runtime, "webhook").await;
    let (port, seen) = receiver(|_| ("204 No Content".into(), String::new())).await;
    let config = settings(&[("url", &format!("http://127.0.0.1:{port}/hook"))]);
    let started = std::time::Instant::now();
    runtime.send(&webhook, &event("body"), &config).await.unwrap();
    let idle = started.elapsed();
    let spinning: Vec<_> = (0..200)
        .map(|_| {
            let (runtime, hostile) = (runtime.clone(), hostile.clone());
            let target = format!("http:http://127.0.0.1:{silent_port}/");
            tokio::spawn(async move { runtime.check(&hostile, &[], &target, Duration::from_secs(4)).await })
        })
        .collect();
    // Every check slot is taken (each call waits 4 s for an answer).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    runtime.send(&webhook, &event("body"), &config).await.unwrap();
    let loaded = started.elapsed();
    let ended = spinning.iter().filter(|s| s.is_finished()).count();
    assert_eq!(ended, 0, "the alert waited for {ended} slow checks to end");
    assert_eq!(seen.lock().unwrap().len(), 2);
    eprintln!("alert latency: {idle:?} idle, {loaded:?} with 200 slow checks");
    for spin in spinning {
        spin.abort();
    }
}
