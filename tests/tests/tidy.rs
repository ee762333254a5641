//! House rules from CONVENTIONS.md that a reviewer would otherwise have to
//! remember. Each rule is one check over the source tree.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    holdfast_tests::repo_root()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        let p = e.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if p.is_dir() && !name.starts_with('.') && name != "target" && name != "node_modules" {
            rust_files(&p, out);
        } else if name.ends_with(".rs") {
            out.push(p);
        }
    }
}

/// Workspace members: (folder, package name).
fn crates() -> Vec<(PathBuf, String)> {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let members = manifest
        .split("members = [")
        .nth(1)
        .and_then(|s| s.split(']').next())
        .expect("members list");
    members
        .split(',')
        .map(|m| m.trim().trim_matches('"'))
        .filter(|m| !m.is_empty())
        .map(|m| {
            let dir = root().join(m);
            let toml = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
            let name = toml
                .lines()
                .find_map(|l| l.strip_prefix("name = "))
                .expect("package name")
                .trim_matches('"')
                .to_string();
            (dir, name)
        })
        .collect()
}

fn sources() -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    for (dir, _) in crates() {
        rust_files(&dir, &mut files);
    }
    files
        .into_iter()
        .map(|p| (p.clone(), std::fs::read_to_string(&p).unwrap()))
        .collect()
}

#[test]
fn every_crate_says_what_it_does() {
    for (dir, name) in crates() {
        let root_file = ["src/lib.rs", "src/main.rs"]
            .iter()
            .map(|f| dir.join(f))
            .find(|p| p.exists())
            .expect("crate root");
        let text = std::fs::read_to_string(&root_file).unwrap();
        assert!(
            text.trim_start().starts_with("//!"),
            "{name}: {} must open with a //! paragraph",
            root_file.display()
        );
    }
}

#[test]
fn architecture_md_names_every_crate() {
    let arch = std::fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    for (_, name) in crates() {
        assert!(
            arch.contains(&format!("`{name}`")),
            "ARCHITECTURE.md does not name crate `{name}`"
        );
    }
}

#[test]
fn required_top_level_folders_exist_with_a_readme() {
    for d in ["core", "fuse", "plugins", "wit", "appliance-image", "tests"] {
        let readme = root().join(d).join("README.md");
        assert!(readme.exists(), "{} is missing", readme.display());
    }
}

#[test]
fn no_debugging_leftovers() {
    // Spelled in pieces so that this file does not trip its own check.
    let banned = [
        ["db", "g!("].concat(),
        ["to", "do!("].concat(),
        ["unimpl", "emented!("].concat(),
    ];
    for (path, text) in sources() {
        for b in &banned {
            assert!(
                !text.contains(b.as_str()),
                "{} contains {b}",
                path.display()
            );
        }
    }
}

#[test]
fn every_channel_is_bounded() {
    let banned = [
        ["unbounded", "_channel"].concat(),
        ["mpsc::", "channel()"].concat(),
        ["unbounded", "()"].concat(),
    ];
    for (path, text) in sources() {
        for b in &banned {
            assert!(
                !text.contains(b.as_str()),
                "{}: {b} is an unbounded queue; use a bounded one with a named limit",
                path.display()
            );
        }
    }
}

#[test]
fn every_unsafe_block_says_why_it_is_sound() {
    for (path, text) in sources() {
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            let code = l.split("//").next().unwrap_or_default();
            if code.contains(&["unsafe", " {"].concat()) {
                let before = &lines[i.saturating_sub(3)..i];
                assert!(
                    before.iter().any(|b| b.contains("SAFETY:")),
                    "{}:{}: unsafe block without a // SAFETY: comment",
                    path.display(),
                    i + 1
                );
            }
        }
    }
}

#[test]
fn limits_live_in_one_place() {
    // Production code only: a test's own knobs are not limits.
    let home = root().join("core/src/limits.rs");
    for (path, text) in sources() {
        if path == home
            || !path.components().any(|c| c.as_os_str() == "src")
            || path.starts_with(root().join("tests"))
        {
            continue;
        }
        for (i, l) in text.lines().enumerate() {
            let t = l.trim_start();
            let is_limit_const = (t.starts_with("const ") || t.starts_with("pub const "))
                && t.split(':')
                    .next()
                    .is_some_and(|n| n.trim_end().ends_with("_MAX"));
            assert!(
                !is_limit_const,
                "{}:{}: limits belong in core/src/limits.rs",
                path.display(),
                i + 1
            );
        }
    }
}
