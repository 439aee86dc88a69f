//! The README's main-job command, `qu demo`.

use std::process::Command;

use qu_tests::qu_bin;

#[test]
fn demo_forms_a_cluster_fails_over_and_cleans_up() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(qu_bin())
        .args(["demo", "--for", "2s", "--every", "1s"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("$ qu status"), "{stdout}");
    assert!(stdout.contains("quorum     true (need 2)"), "{stdout}");
    assert!(stdout.matches("\n*  ").count() >= 2, "status shows this node's marker: {stdout}");
    assert!(stdout.contains("added node3"), "{stdout}");
    assert!(stdout.contains("took over after"), "the failover is shown: {stdout}");
    assert!(stdout.contains("$ qu check add http flappy"), "{stdout}");
    let web_up = stdout.lines().any(|l| l.contains(" web ") && l.contains(" up ") && l.contains("status 200"));
    assert!(web_up, "the stable check shows a verdict: {stdout}");
    assert!(stdout.contains("demo finished"), "{stdout}");
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "the demo removes its directory: {left:?}");
}
