//! Golden tests of the messages for bad definition files: each
//! `tests/golden/definitions/<case>.yaml` must fail with exactly the text of
//! `<case>.expected`. Run with `UPDATE_GOLDEN=1` to rewrite the expectations after a
//! deliberate change of wording (and review the diff).

use std::path::Path;

use skewless::definitions::{Definitions, SourceFile};

#[test]
fn bad_definition_files_give_golden_messages() {
    // Run-time path: a shared build cache may hold a binary compiled in another checkout.
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf())
        .join("tests/golden/definitions");
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("yaml"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 7, "golden cases went missing");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for case in cases {
        let name = case.file_name().unwrap().to_str().unwrap().to_string();
        let text = std::fs::read_to_string(&case).unwrap();
        let message = match Definitions::parse(&[SourceFile {
            name: &name,
            text: &text,
        }]) {
            Ok(_) => format!("{name} unexpectedly parsed"),
            Err(errors) => errors.to_string(),
        };
        let expected_path = case.with_extension("expected");
        if update {
            std::fs::write(&expected_path, format!("{message}\n")).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected.trim_end() != message {
            failures.push(format!(
                "--- {name}\nexpected:\n{expected}\nactual:\n{message}\n"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
