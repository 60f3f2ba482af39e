//! The documents are pinned to what they describe:
//! - `docs/diagnostics.md` shows every diagnostic with its real compiler
//!   output, and fails when a `.stderr` under `tests/ui/fail/` changes and
//!   the catalogue does not;
//! - the front door's manager is the crate README's (which rustdoc compiles
//!   and runs as a doctest of the crate);
//! - every relative link of the README, the crate READMEs and `docs/`
//!   points at a file that exists.

use std::path::{Path, PathBuf};

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{path}: {error}"))
}

#[test]
fn the_diagnostics_catalogue_shows_every_ui_diagnostic_verbatim() {
    let catalogue = read("docs/diagnostics.md");
    let mut checked = 0;
    for entry in std::fs::read_dir("tests/ui/fail").expect("tests/ui/fail") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "stderr") {
            let stderr = std::fs::read_to_string(&path).expect("stderr file");
            assert!(
                catalogue.contains(stderr.trim_end()),
                "docs/diagnostics.md does not show the current output of {}",
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

/// The first fenced block of `language` in `text`.
fn first_block<'a>(text: &'a str, language: &str) -> &'a str {
    let open = format!("```{language}\n");
    let start = text.find(&open).map(|i| i + open.len());
    let start = start.unwrap_or_else(|| panic!("no ```{language} block"));
    let end = text[start..].find("```").expect("an unclosed block") + start;
    &text[start..end]
}

#[test]
fn the_front_doors_manager_is_the_doctested_one() {
    let front = read("README.md");
    let crate_readme = read("runtime/README.md");
    assert_eq!(
        first_block(&front, "rust"),
        first_block(&crate_readme, "rust"),
        "README.md's manager differs from runtime/README.md's (the doctested one)"
    );
}

/// `(target, line)` of every relative Markdown link `](target)` outside
/// code blocks, anchors cut off.
fn relative_links(text: &str) -> Vec<(String, usize)> {
    let mut links = Vec::new();
    let mut fenced = false;
    for (n, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        if fenced {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            let Some(end) = rest.find(')') else { break };
            let target = &rest[..end];
            rest = &rest[end..];
            if target.contains("://") || target.starts_with('#') || target.starts_with("mailto:") {
                continue;
            }
            let path = target.split('#').next().unwrap_or(target);
            links.push((path.to_owned(), n + 1));
        }
    }
    links
}

#[test]
fn every_relative_link_of_the_documents_points_at_a_file() {
    let mut documents: Vec<PathBuf> = vec![
        "README.md".into(),
        "CHANGELOG.md".into(),
        "BENCHMARKS.md".into(),
        "runtime/README.md".into(),
        "macros/README.md".into(),
        "clients/js/README.md".into(),
    ];
    for entry in std::fs::read_dir("docs").expect("docs/") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            documents.push(path);
        }
    }
    let mut checked = 0;
    let mut broken = Vec::new();
    for document in &documents {
        let text = std::fs::read_to_string(document).expect("document");
        let base = document.parent().unwrap_or(Path::new(""));
        for (target, line) in relative_links(&text) {
            checked += 1;
            if !base.join(&target).exists() {
                broken.push(format!("{}:{line}: {target}", document.display()));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "links to nothing:\n{}",
        broken.join("\n")
    );
    assert!(checked >= 20, "expected at least 20 links, found {checked}");
}

/// The sample startup table of `docs/managers.md` names where each manager
/// this binary links is registered: a line that moved fails here, so the
/// sample is refreshed with `cargo run --example startup`.
#[test]
fn the_sample_startup_table_names_where_the_managers_are() {
    // Linked, so that its registration is in the registry.
    use example_managers as _;
    let guide = read("docs/managers.md");
    let registry = websocket_manager::startup::Registry::global();
    let mut checked = 0;
    for row in guide.lines() {
        let mut columns = row.split_whitespace();
        let (Some(name), Some(_mode), Some(type_name), Some(location)) = (
            columns.next(),
            columns.next(),
            columns.next(),
            columns.next(),
        ) else {
            continue;
        };
        let Some(registration) = registry
            .named(name)
            .into_iter()
            .find(|r| r.type_name.ends_with(type_name))
        else {
            continue;
        };
        assert_eq!(
            location,
            registration.location(),
            "docs/managers.md shows {name} at {location}; run `cargo run --example startup` and paste its table"
        );
        checked += 1;
    }
    assert!(
        checked >= 4,
        "expected the 4 linked managers, checked {checked}"
    );
}
