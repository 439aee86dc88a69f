//! Compiles the plugins in `plugins/` for wasm32-wasip2 and embeds the
//! built-in ones (`dns`, `tls` and the sinks) in the crate; a built-in
//! that does not build fails the build.

use std::fmt::Write;

fn main() {
    let dir = qu_wasm_build::build_plugins();
    let mut code =
        String::from("/// Built-in plugins: (name, component bytes).\npub static BUILT_IN: &[(&str, &[u8])] = &[\n");
    for name in qu_wasm_build::BUILT_IN_CHECKS.iter().chain(qu_wasm_build::BUILT_IN_SINKS) {
        // Every built-in is part of what `qu` promises: one that did not
        // come out of the build stops it, rather than shipping without it.
        let path = dir.join(format!("{name}.wasm"));
        assert!(
            path.is_file(),
            "built-in plugin {name}: the plugins build produced no {} (is it a member of plugins/Cargo.toml and in qu_wasm_build::GROUPS?)",
            path.display()
        );
        writeln!(code, "    ({name:?}, include_bytes!({:?})),", path.display().to_string()).unwrap();
    }
    code.push_str("];\n");
    writeln!(
        code,
        "/// Where this build's plugin components are (tests and benchmarks).\npub const ARTIFACTS: &str = {:?};",
        dir.display().to_string()
    )
    .unwrap();
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("built_in.rs");
    std::fs::write(out, code).unwrap();
}
