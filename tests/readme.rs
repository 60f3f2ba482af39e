//! The README shows every diagnostic with its real compiler output: this
//! fails when a `.stderr` under `tests/ui/fail/` changes and the README does not.

#[test]
fn readme_shows_every_ui_diagnostic_verbatim() {
    let readme = std::fs::read_to_string("README.md").expect("README.md at the workspace root");
    let mut checked = 0;
    for entry in std::fs::read_dir("tests/ui/fail").expect("tests/ui/fail") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "stderr") {
            let stderr = std::fs::read_to_string(&path).expect("stderr file");
            assert!(
                readme.contains(stderr.trim_end()),
                "README.md does not show the current output of {}",
                path.display()
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 15,
        "expected at least 15 UI diagnostics, found {checked}"
    );
}
