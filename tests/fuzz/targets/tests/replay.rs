//! Replays the committed corpora of `tests/fuzz/corpus/` through the fuzz
//! targets on stable: every input the fuzzer kept, and every one that once
//! found a bug, runs in CI as an ordinary test.

use std::path::Path;

#[test]
fn every_corpus_input_runs_cleanly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus");
    for (name, target) in qu_fuzz_targets::TARGETS {
        let dir = root.join(name);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e} (every target has a committed corpus)", dir.display()))
            .map(|entry| entry.unwrap().path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "{}: an empty corpus", dir.display());
        for input in &inputs {
            let bytes = std::fs::read(input).unwrap();
            let outcome = std::panic::catch_unwind(|| target(&bytes));
            assert!(outcome.is_ok(), "{name}: {} fails", input.display());
        }
        eprintln!("{name}: {} inputs", inputs.len());
    }
}
