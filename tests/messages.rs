//! Messages as written in the source: a string literal continued on the next line without a
//! trailing `\` keeps the next line's indentation, and users saw runs of blanks in the middle
//! of sentences (issue 41: `src/hub/download.rs`, `src/sweep/slurm.rs`). No string literal in
//! `src/` may hold a run of three or more blanks between two other characters.
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The ordinary (not raw) string literals of Rust source `text`, with their line numbers;
/// comments and character literals are skipped.
fn string_literals(text: &str) -> Vec<(usize, String)> {
    let b = text.as_bytes();
    let (mut i, mut line, mut out) = (0, 1, Vec::new());
    while i < b.len() {
        match b[i] {
            b'\n' => line += 1,
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'\'' => {
                // A character literal ('x', '\n', '"') or a lifetime: skip the literal only.
                if b.get(i + 2) == Some(&b'\'') {
                    i += 3;
                    continue;
                }
                if b.get(i + 1) == Some(&b'\\') {
                    if let Some(end) = b[i + 2..].iter().position(|&c| c == b'\'') {
                        i += end + 3;
                        continue;
                    }
                }
            }
            b'r' if matches!(b.get(i + 1), Some(b'"' | b'#'))
                && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')) =>
            {
                // A raw string: skip to its closing quote and hashes.
                let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
                if b.get(i + 1 + hashes) == Some(&b'"') {
                    let close = format!("\"{}", "#".repeat(hashes));
                    let from = i + 2 + hashes;
                    if let Some(end) = text[from..].find(&close) {
                        line += text[i..from + end].matches('\n').count();
                        i = from + end + close.len();
                        continue;
                    }
                }
            }
            b'"' => {
                let start_line = line;
                let mut s = String::new();
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        // An escaped line end skips the next line's indentation, as Rust does.
                        if b.get(i + 1) == Some(&b'\n') {
                            line += 1;
                            i += 2;
                            while i < b.len() && b[i].is_ascii_whitespace() {
                                if b[i] == b'\n' {
                                    line += 1;
                                }
                                i += 1;
                            }
                            continue;
                        }
                        s.push('\\');
                        i += 1;
                    }
                    if b[i] == b'\n' {
                        line += 1;
                    }
                    s.push(b[i] as char);
                    i += 1;
                }
                out.push((start_line, s));
            }
            _ => {}
        }
        i += 1;
    }
    out
}

#[test]
fn no_message_holds_a_run_of_blanks() {
    let mut files = Vec::new();
    rust_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    assert!(files.len() > 30, "{}", files.len());
    let mut found = Vec::new();
    let mut literals = 0;
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for (line, s) in string_literals(&text) {
            literals += 1;
            let t = s.trim();
            if t.contains("   ") || t.contains("\n ") {
                found.push(format!("{}:{line}: {:?}", f.display(), s));
            }
        }
    }
    assert!(
        literals > 1000,
        "{literals} literals: the scanner is broken"
    );
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn the_scanner_finds_a_string_continued_without_a_backslash() {
    let bad = "fn f() { g(\"a message that goes\n             on here\"); }";
    let good = "fn f() { g(\"a message that goes \\\n             on here\"); }";
    let lit = |src: &str| string_literals(src).remove(0).1;
    assert!(lit(bad).contains("\n             on"));
    assert_eq!(lit(good), "a message that goes on here");
    assert_eq!(string_literals("let c = '\"'; let s = \"x\";")[0].1, "x");
    assert_eq!(
        string_literals("let s = r#\"a \"   b\"#; let t = \"y\";")[0].1,
        "y"
    );
}
