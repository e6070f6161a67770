//! The corpus of real compose files that tests and benchmarks load (`../shared/corpus` beside
//! the checkout; never edited). Test support, not part of the loader.

use std::path::{Path, PathBuf};

/// The corpus directory, symlinks resolved: the nearest ancestor of this crate that has a
/// `shared/corpus` (a worktree under /work/wt/NAME finds /work/shared/corpus as /work/main
/// does). Panics when there is none: a test that needs it must fail, not skip.
pub fn dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .map(|a| a.join("shared/corpus"))
        .find(|p| p.is_dir())
        .and_then(|p| std::fs::canonicalize(p).ok())
        .unwrap_or_else(|| panic!("cannot find shared/corpus beside {}", manifest.display()))
}

/// The compose files under `dir` (names with `compose` ending in `.yml`/`.yaml`, and
/// `docker-stack.yml`), in path order.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    collect(dir, &mut out);
    out
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if p.is_dir() {
            collect(&p, out);
        } else if (name.contains("compose") || name == "docker-stack.yml")
            && (name.ends_with(".yml") || name.ends_with(".yaml"))
        {
            out.push(p);
        }
    }
}
