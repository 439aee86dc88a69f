//! Used by build scripts (qu-plugin, the test crate): compiles the
//! `plugins/` workspace for `wasm32-wasip2` with the same cargo, into a
//! target directory beside the caller's, and says where the components are.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The WebAssembly target plugins are built for.
pub const TARGET: &str = "wasm32-wasip2";

/// The check plugins shipped inside `qu` (`qu_core::config::BUILT_IN_CHECK_PLUGINS`
/// says the same to the pure core; a test in qu-daemon keeps them equal).
pub const BUILT_IN_CHECKS: &[&str] = &["dns", "tls"];
/// The sinks shipped inside `qu` (`qu_core::config::BUILT_IN_SINK_PLUGINS`).
pub const BUILT_IN_SINKS: &[&str] = &[
    "webhook",
    "discord",
    "email",
    "slack",
    "teams",
    "telegram",
    "pagerduty",
    "opsgenie",
    "ntfy",
    "gotify",
    "pushover",
    "matrix",
    "mattermost",
    "googlechat",
];

/// The plugins, by the SDK feature they use. Cargo unifies a dependency's
/// features across the packages of one build, and the SDK allows one world
/// per plugin, so check plugins and sinks are built in separate runs.
pub const GROUPS: [&[&str]; 2] = [&["dns", "tls", "http-json", "echo", "hostile"], BUILT_IN_SINKS];

/// Builds every plugin (release) and returns the directory holding the
/// `.wasm` components. Panics with a message naming the fix when the
/// target is missing or a plugin does not compile: a build script cannot
/// go on without them.
pub fn build_plugins() -> PathBuf {
    // Components another build already made (the fuzzer's nightly build
    // has no wasm32-wasip2 target: `tests/fuzz/run` builds them on stable
    // first and points here).
    println!("cargo:rerun-if-env-changed=QU_PLUGIN_ARTIFACTS");
    if let Some(dir) = std::env::var_os("QU_PLUGIN_ARTIFACTS") {
        let dir = PathBuf::from(dir);
        assert!(dir.is_dir(), "QU_PLUGIN_ARTIFACTS={}: no such directory", dir.display());
        return dir;
    }
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("run from a build script"));
    let root = manifest_dir
        .ancestors()
        .find(|p| p.join("plugins/Cargo.toml").is_file())
        .expect("plugins/Cargo.toml above this crate")
        .to_path_buf();
    for watched in ["plugins/Cargo.toml", "plugins/Cargo.lock", "plugins/dns", "plugins/tls", "plugins/examples"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    for watched in ["plugins/testing", "plugins/sinks", "sdk/src", "sdk/Cargo.toml", "wit"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let target_dir = outer_target_dir().join("plugins");
    for group in GROUPS {
        build_group(&root, &target_dir, group);
    }
    target_dir.join(TARGET).join("release")
}

fn build_group(root: &Path, target_dir: &Path, packages: &[&str]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args(["build", "--release", "--locked", "--target", TARGET, "--manifest-path"])
        .arg(root.join("plugins/Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    for package in packages {
        command.args(["-p", package]);
    }
    // Settings meant for the host build must not leak into the guest one.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PRIMARY_PACKAGE",
        "TARGET",
        "HOST",
        "OPT_LEVEL",
        "DEBUG",
        "PROFILE",
        "OUT_DIR",
        "NUM_JOBS",
        "CARGO_CFG_TARGET_FEATURE",
    ] {
        command.env_remove(var);
    }
    for (key, _) in std::env::vars() {
        if key.starts_with("CARGO_PROFILE_") || key.starts_with("CARGO_FEATURE_") {
            command.env_remove(key);
        }
    }
    let output = command.output().expect("run cargo to build the plugins");
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("may not be installed") || stderr.contains("can't find crate for `core`") {
            panic!("the {TARGET} target is missing: run `rustup target add {TARGET}`\n{stderr}");
        }
        panic!("building the plugins (plugins/) for {TARGET} failed:\n{stderr}");
    }
}

/// `target/` of the build that runs this script, from `OUT_DIR`
/// (`<target>/<profile>/build/<crate>-<hash>/out`).
fn outer_target_dir() -> PathBuf {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR in a build script"));
    let build = out.ancestors().find(|p| p.file_name().is_some_and(|n| n == "build")).expect("OUT_DIR under build/");
    build.parent().and_then(Path::parent).expect("target dir above the profile dir").to_path_buf()
}
