//! Backward compatibility: a component built against qu:plugin@0.1.0 (the
//! `echo` test plugin, recorded when 0.1.0 was released) keeps loading and
//! answering. Never rebuild the fixture; a host that cannot run it has
//! broken every plugin built for 0.1.0.

use std::sync::Arc;
use std::time::Duration;

use qu_plugin::{Kind, Limits, Runtime, Status};

const FIXTURE: &[u8] = include_bytes!("../fixtures/echo-0.1.0.wasm");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_built_against_0_1_0_still_runs() {
    let runtime = Runtime::new(None).unwrap();
    let plugin = runtime.load(None, Arc::from(FIXTURE), Vec::new(), Limits::default()).await.unwrap();
    assert_eq!(plugin.kind, Kind::Check);
    assert_eq!(plugin.info.name, "echo");
    assert_eq!(plugin.wit_version, "0.1.0", "read from the component's exports");
    assert!(plugin.imports.iter().any(|i| i == "qu:plugin/types@0.1.0"), "{:?}", plugin.imports);
    let config = vec![("message".to_string(), "still here".to_string())];
    runtime.validate_check(&plugin, &config, "x").await.unwrap();
    let up = runtime.check(&plugin, &config, "x", Duration::from_secs(2)).await.unwrap();
    assert_eq!((up.status, up.message.as_str()), (Status::Up, "still here"));
    let down = runtime.check(&plugin, &[], "down", Duration::from_secs(2)).await.unwrap();
    assert_eq!(down.status, Status::Down);
}
