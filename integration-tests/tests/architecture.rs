//! The walls of the code's shape, checked by reading the sources: a gRPC status is made from an
//! error kind in `shared::error` and nowhere else, so the same failure gets the same code in
//! every service.

use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The places in `source` (before its `#[cfg(test)]` module) that construct a `tonic::Status`:
/// `Status::new(…)`, `Status::invalid_argument(…)`, `Status::from_error(…)`, … as
/// `(line number, line)`. OpenTelemetry's `trace::Status` and names that end in `Status` are
/// other types and are skipped, and so is `Status::from_header_map`: it reads the status a peer
/// sent (the gateway relays a replica's answer as it came), it does not make one.
fn status_constructors(source: &str) -> Vec<(usize, String)> {
    let code = source.split("#[cfg(test)]").next().unwrap_or_default();
    let mut found = Vec::new();
    for (number, line) in code.lines().enumerate() {
        let text = line.split("//").next().unwrap_or_default();
        let mut rest = text;
        while let Some(at) = rest.find("Status::") {
            let before = &rest[..at];
            let after = &rest[at + "Status::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            let is_call = !name.is_empty() && after[name.len()..].starts_with('(');
            let part_of_a_name = before
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_');
            let reads_a_peer_s = name == "from_header_map";
            if is_call && !part_of_a_name && !reads_a_peer_s && !before.ends_with("trace::") {
                found.push((number + 1, line.trim().to_owned()));
            }
            rest = after;
        }
    }
    found
}

#[test]
fn only_shared_error_turns_an_error_into_a_grpc_status() {
    let root = integration_tests::repo_root();
    let mut dirs = vec![root.join("shared/src")];
    for service in std::fs::read_dir(root.join("services")).unwrap() {
        dirs.push(service.unwrap().path().join("src"));
    }
    let allowed = root.join("shared/src/error.rs");
    let mut offenders = Vec::new();
    let mut read = 0;
    for dir in &dirs {
        for file in sources(dir) {
            read += 1;
            if file == allowed {
                continue;
            }
            let source = std::fs::read_to_string(&file).unwrap();
            for (line, text) in status_constructors(&source) {
                let shown = file.strip_prefix(&root).unwrap_or(&file).display();
                offenders.push(format!("{shown}:{line}: {text}"));
            }
        }
    }
    assert!(
        read > 40,
        "read only {read} source files: is the layout still services/*/src?"
    );
    assert!(
        offenders.is_empty(),
        "a tonic::Status is built by hand outside shared/src/error.rs; return the service's error \
         (an enum implementing shared::error::ServiceError) instead:\n{}",
        offenders.join("\n")
    );
}

#[test]
fn the_scan_finds_a_status_built_by_hand() {
    let source = "fn f() -> Status {\n    Status::invalid_argument(\"no\")\n}\n\
                  fn g() { span.set_status(opentelemetry::trace::Status::error(\"x\")); }\n\
                  fn e() { pb::ExemplarStatus::try_from(1); Status::from_header_map(&h); }\n\
                  fn h(s: &tonic::Status) -> Code { s.code() } // Status::new(…) in a comment\n\
                  #[cfg(test)]\nmod tests { fn t() { tonic::Status::internal(\"in a test\"); } }\n";
    assert_eq!(
        status_constructors(source),
        vec![(2, "Status::invalid_argument(\"no\")".to_owned())]
    );
}
