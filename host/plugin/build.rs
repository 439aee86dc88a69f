//! Compiles the plugins in `plugins/` for wasm32-wasip2 and embeds the
//! built-in ones (`dns`, `tls`, and the sinks when present) in the crate.

use std::fmt::Write;

/// Plugins shipped inside `qu`.
const BUILT_IN: &[&str] = &["dns", "tls", "webhook", "discord", "email"];

fn main() {
    let dir = qu_wasm_build::build_plugins();
    let mut code =
        String::from("/// Built-in plugins: (name, component bytes).\npub static BUILT_IN: &[(&str, &[u8])] = &[\n");
    for name in BUILT_IN {
        let path = dir.join(format!("{name}.wasm"));
        if path.is_file() {
            writeln!(code, "    ({name:?}, include_bytes!({:?})),", path.display().to_string()).unwrap();
        }
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
