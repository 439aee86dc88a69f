//! The daemon library in-process: pre-bound listeners on port 0 and a
//! shutdown future, as tests and embedders use it.

use std::time::Duration;

use qu_daemon::control::{self, ControlRequest, ControlResponse};
use qu_daemon::init::{InitOptions, init};
use qu_daemon::{Listeners, LoadedNode};
use qu_store::DataDir;

#[tokio::test(flavor = "multi_thread")]
async fn a_node_runs_in_process_on_port_zero_and_stops_on_its_shutdown_future() {
    let dir = tempfile::tempdir().unwrap();
    let data = DataDir::new(dir.path().join("data"));
    let report =
        init(&data, InitOptions { advertise: "127.0.0.1:9901".into(), bind: None, port: None, secret: None }).unwrap();
    let loaded = LoadedNode::load(&data, &Default::default()).unwrap();
    let peer = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let socket = dir.path().join("qu.sock");
    let control_listener = control::bind(&socket).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let listeners = Listeners { peer, control: control_listener, control_path: Some(socket.clone()), http: None };
    let daemon = tokio::spawn(qu_daemon::run(loaded, listeners, async {
        let _ = stopped.await;
    }));

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let view = loop {
        let answer = control::call(&socket, &ControlRequest::Status, Duration::from_secs(5)).await.unwrap();
        let ControlResponse::Status(view) = answer else { panic!("unexpected {answer:?}") };
        if view.config_version == 2 {
            break view;
        }
        assert!(tokio::time::Instant::now() < deadline, "config version 2 within 20 s; still {}", view.config_version);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(view.node_id, report.node_id);
    assert_eq!(view.master, Some(report.node_id));
    assert!(view.quorum);
    assert_eq!(view.term, 1);

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), daemon).await.unwrap().unwrap().unwrap();
    assert!(!socket.exists(), "socket removed at shutdown");
    assert_eq!(std::fs::read_to_string(data.state_yaml()).unwrap().lines().next(), Some("term: 1"));
}
