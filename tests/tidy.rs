//! Tidy checks: the architecture's dependency rules (ARCHITECTURE.md,
//! "Rules") and the source conventions, checked on the source text so a
//! broken rule fails `cargo test` instead of living in reviewers' heads.
//!
//! Each rule names the folders it covers and the tokens that must not
//! appear in their code (comments are skipped, so a doc comment may say
//! what a module never does).

use std::fs;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir` (relative to the workspace root), sorted.
fn rust_files(dir: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n == "target") {
                    continue;
                }
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root().join(dir), &mut out);
    out.sort();
    out
}

fn rel(p: &Path) -> String {
    p.strip_prefix(root()).unwrap_or(p).display().to_string()
}

/// Code lines (1-based number, text) with line comments removed.
fn code_lines(p: &Path) -> Vec<(usize, String)> {
    let text = fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    text.lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let t = l.trim_start();
            if t.starts_with("//") {
                return None;
            }
            let code = match l.find("//") {
                // Not inside a string literal (good enough for our code).
                Some(at) if !l[..at].contains('"') => &l[..at],
                _ => l,
            };
            Some((i + 1, code.to_string()))
        })
        .collect()
}

/// A dependency rule: code under `dirs` must not mention any of `banned`.
struct Rule {
    what: &'static str,
    dirs: &'static [&'static str],
    /// Files under `dirs` the rule does not cover.
    except: &'static [&'static str],
    banned: &'static [&'static str],
}

const RULES: &[Rule] = &[
    Rule {
        what: "node-side code never imports the CLI (src/cli/ is a client of the API)",
        dirs: &["src"],
        except: &["src/main.rs", "src/cli/"],
        banned: &["crate::cli", "super::cli", "cli::"],
    },
    Rule {
        what: "the supervisor (and the switch protocol it shares) never opens sled and never imports storage or updates",
        dirs: &["src/supervisor", "src/switch"],
        except: &[],
        banned: &[
            "sled",
            "plexi_store",
            "NodeStore",
            "crate::storage",
            "crate::updates",
            "crate::audit",
            "plexi_p2p",
        ],
    },
    Rule {
        what: "the services (storage, updates, audit) never import axum or HTTP types; they return their own thiserror enums, mapped to HTTP in src/node/api/",
        dirs: &["src/storage", "src/updates", "src/audit", "src/alerts"],
        except: &[],
        banned: &[
            "axum",
            "http::",
            "StatusCode",
            "ApiError",
            "plexi_api::error",
            "reqwest",
            "hyper",
        ],
    },
    Rule {
        what: "api/ never sees libp2p types (nor sled)",
        dirs: &["api/src"],
        except: &[],
        banned: &["libp2p", "plexi_p2p", "sled", "plexi_store", "PeerId"],
    },
    Rule {
        what: "store/ does no network I/O",
        dirs: &["store/src"],
        except: &[],
        banned: &[
            "libp2p",
            "plexi_p2p",
            "tokio::net",
            "std::net",
            "reqwest",
            "axum",
            "TcpStream",
            "UdpSocket",
        ],
    },
    Rule {
        what: "p2p/ knows nothing of storage, updates or the API",
        dirs: &["p2p/src"],
        except: &[],
        banned: &["plexi_store", "plexi_api", "sled", "axum"],
    },
    Rule {
        what: "plexi-util (src/util/) depends on no other plexi crate",
        dirs: &["src/util"],
        except: &[],
        banned: &["plexi_p2p", "plexi_store", "plexi_api", "crate::storage", "libp2p", "sled"],
    },
];

fn covered(rule: &Rule, file: &str) -> bool {
    !rule.except.iter().any(|e| {
        if e.ends_with('/') {
            file.starts_with(e)
        } else {
            file == *e
        }
    })
}

/// `token` as a whole word-ish match: not part of a longer identifier.
fn mentions(code: &str, token: &str) -> bool {
    let bytes = code.as_bytes();
    let mut from = 0;
    while let Some(at) = code[from..].find(token) {
        let start = from + at;
        let end = start + token.len();
        let before = start.checked_sub(1).map(|i| bytes[i]);
        let after = bytes.get(end).copied();
        let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
        let first_ident = token.as_bytes().first().copied().is_some_and(ident);
        let last_ident = token.as_bytes().last().copied().is_some_and(ident);
        let clean_before = !first_ident || before.is_none_or(|b| !ident(b));
        let clean_after = !last_ident || after.is_none_or(|b| !ident(b));
        if clean_before && clean_after {
            return true;
        }
        from = end;
    }
    false
}

fn violations(rule: &Rule) -> Vec<String> {
    let mut out = Vec::new();
    for dir in rule.dirs {
        for file in rust_files(dir) {
            let name = rel(&file);
            if !covered(rule, &name) {
                continue;
            }
            for (n, code) in code_lines(&file) {
                for token in rule.banned {
                    if mentions(&code, token) {
                        out.push(format!("{name}:{n}: `{token}` in `{}`", code.trim()));
                    }
                }
            }
        }
    }
    out
}

#[test]
fn dependency_rules_hold() {
    let mut failures = Vec::new();
    for rule in RULES {
        let v = violations(rule);
        if !v.is_empty() {
            failures.push(format!("rule broken: {}\n  {}", rule.what, v.join("\n  ")));
        }
    }
    assert!(
        failures.is_empty(),
        "\n{}\n(see ARCHITECTURE.md, Rules)",
        failures.join("\n")
    );
}

/// The rules cover real folders: a renamed folder must not silently
/// switch a rule off.
#[test]
fn every_rule_covers_files() {
    for rule in RULES {
        for dir in rule.dirs {
            assert!(
                !rust_files(dir).is_empty(),
                "rule {:?} names {dir}, which holds no Rust file",
                rule.what
            );
        }
    }
}

/// The checker itself finds what it must (so the rules cannot pass by a
/// matching bug).
#[test]
fn the_matcher_matches_whole_names_only() {
    assert!(mentions("use axum::http::StatusCode;", "axum"));
    assert!(mentions("use axum::http::StatusCode;", "StatusCode"));
    assert!(!mentions("let my_axum_like = 1;", "axum"));
    assert!(!mentions("StatusCodeX", "StatusCode"));
    assert!(mentions("x.map_err(ApiError::from)", "ApiError"));
    assert!(mentions("use crate::cli::ApiArgs;", "crate::cli"));
    assert!(!mentions("use crate::client;", "cli::"));
}

/// Manifests agree with the code rules: api/ and store/ cannot even reach
/// the crates they must not use.
#[test]
fn manifests_keep_the_layers_apart() {
    let deps = |crate_dir: &str| -> String {
        let text = fs::read_to_string(root().join(crate_dir).join("Cargo.toml")).unwrap();
        // Only the [dependencies] section (dev-dependencies may differ).
        let start = text.find("[dependencies]").expect("[dependencies]");
        let rest = &text[start + 1..];
        let end = rest
            .find("\n[")
            .map(|e| e + start + 1)
            .unwrap_or(text.len());
        text[start..end].to_string()
    };
    let api = deps("api");
    for banned in ["libp2p", "plexi-p2p", "plexi-store", "sled"] {
        assert!(!api.contains(banned), "api/Cargo.toml depends on {banned}");
    }
    let store = deps("store");
    for banned in ["libp2p", "plexi-p2p", "plexi-api", "axum", "reqwest"] {
        assert!(
            !store.contains(banned),
            "store/Cargo.toml depends on {banned}"
        );
    }
    let util = deps("src/util");
    for banned in ["plexi-", "libp2p", "sled", "axum", "tokio"] {
        assert!(
            !util.contains(banned),
            "src/util/Cargo.toml depends on {banned}"
        );
    }
}

/// No status, phase, level or strategy is a bare string in the API's
/// model: each is one of the shared vocabulary types (plexi-util).
#[test]
fn the_api_model_speaks_the_vocabulary() {
    let banned = [
        "status: String",
        "phase: String",
        "consistency_level: String",
        "storage_strategy: String",
        "strategy: String",
        "update_type: String",
        "status: Option<String>",
    ];
    let file = root().join("api/src/model.rs");
    let mut found = Vec::new();
    for (n, code) in code_lines(&file) {
        let field = code.trim().trim_start_matches("pub ");
        if banned.iter().any(|b| field.starts_with(b)) {
            found.push(format!("api/src/model.rs:{n}: {}", code.trim()));
        }
    }
    assert!(
        found.is_empty(),
        "bare strings where a vocabulary type belongs (src/util/types.rs):\n  {}",
        found.join("\n  ")
    );
}

/// The node's wiring stays readable: no function in `src/node/` over
/// [`MAX_NODE_FN_LINES`] lines (tests excluded).
const MAX_NODE_FN_LINES: usize = 150;

/// `(name, first line, length)` of every function before a `mod tests`.
fn functions(p: &Path) -> Vec<(String, usize, usize)> {
    let text = fs::read_to_string(p).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let t = lines[i].trim_start();
        if t.starts_with("mod tests") || t.starts_with("pub(crate) mod tests") {
            break;
        }
        let header = t
            .trim_start_matches("pub(crate) ")
            .trim_start_matches("pub ")
            .trim_start_matches("async ");
        if let Some(rest) = header.strip_prefix("fn ") {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let (mut depth, mut opened, mut j) = (0i32, false, i);
            while j < lines.len() {
                if !opened && lines[j].trim_end().ends_with(';') {
                    break;
                }
                for c in lines[j].chars() {
                    match c {
                        '{' => {
                            depth += 1;
                            opened = true
                        }
                        '}' => depth -= 1,
                        _ => {}
                    }
                }
                if opened && depth == 0 {
                    break;
                }
                j += 1;
            }
            if opened {
                out.push((name, i + 1, j - i + 1));
                i = j + 1;
                continue;
            }
        }
        i += 1;
    }
    out
}

#[test]
fn node_wiring_has_no_long_function() {
    let mut long = Vec::new();
    for file in rust_files("src/node") {
        for (name, line, len) in functions(&file) {
            if len > MAX_NODE_FN_LINES {
                long.push(format!("{}:{line}: fn {name} is {len} lines", rel(&file)));
            }
        }
    }
    assert!(
        long.is_empty(),
        "split these into named phases (at most {MAX_NODE_FN_LINES} lines):\n  {}",
        long.join("\n  ")
    );
    // The checker sees real functions.
    let run = functions(&root().join("src/node/mod.rs"));
    assert!(
        run.iter().any(|(n, _, len)| n == "run" && *len > 10),
        "{run:?}"
    );
}

/// Every source file starts with a doc comment saying what it owns.
#[test]
fn every_source_file_starts_with_a_doc_comment() {
    let mut missing = Vec::new();
    for dir in ["src", "p2p", "store", "api", "tests", "testnet"] {
        for file in rust_files(dir) {
            let text = fs::read_to_string(&file).unwrap();
            let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            if !first.starts_with("//!") {
                missing.push(rel(&file));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "these files do not start with a `//!` doc comment saying what they own:\n  {}",
        missing.join("\n  ")
    );
}

/// The top level stays the design card's.
#[test]
fn top_level_is_the_design_cards() {
    let allowed = [
        "Cargo.toml",
        "Cargo.lock",
        "src",
        "p2p",
        "store",
        "api",
        "testnet",
        "tests",
        "docs",
        "config",
        ".ci",
        "README.md",
        "ARCHITECTURE.md",
        ".gitignore",
        "rustfmt.toml",
        "clippy.toml",
    ];
    let out = std::process::Command::new("git")
        .args(["ls-files"])
        .current_dir(root())
        .output()
        .expect("git");
    if !out.status.success() {
        return; // not a git checkout: nothing to compare
    }
    let mut unexpected: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split('/').next())
        .filter(|top| !allowed.contains(top))
        .map(str::to_string)
        .collect();
    unexpected.sort();
    unexpected.dedup();
    assert!(
        unexpected.is_empty(),
        "unexpected top-level entries: {unexpected:?}"
    );
}
