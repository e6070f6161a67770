//! Loading every compose file of the corpus (`../shared/corpus`), end to end, in memory from
//! the real files (read once), including interpolation, merging, validation and normalisation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use criterion::{Criterion, criterion_group, criterion_main};
use ic_compose::{LoadOptions, load};

fn corpus() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/corpus"
    ))
}

fn compose_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            compose_files(&p, out);
        } else if let Some(name) = p.file_name().and_then(|n| n.to_str()) {
            let is_compose = (name.contains("compose") || name.contains("stack"))
                && (name.ends_with(".yml") || name.ends_with(".yaml"));
            if is_compose {
                out.push(p);
            }
        }
    }
}

fn bench(c: &mut Criterion) {
    let mut files = Vec::new();
    compose_files(&corpus(), &mut files);
    let env: BTreeMap<String, String> = [
        ("DOMAIN", "example.org"),
        ("ADMIN_USER", "admin"),
        ("HASHED_PASSWORD", "x"),
        ("HOME", "/root"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let options: Vec<LoadOptions> = files
        .iter()
        .map(|f| LoadOptions {
            files: vec![f.clone()],
            working_dir: f.parent().map(Path::to_path_buf).unwrap_or_default(),
            environment: env.clone(),
            interpolate: true,
            ..LoadOptions::default()
        })
        .collect();
    c.bench_function(
        &format!("load whole corpus ({} files)", options.len()),
        |b| {
            b.iter(|| {
                for o in &options {
                    let p = load(o).expect("corpus file loads");
                    std::hint::black_box(p);
                }
            })
        },
    );
    let mut group = c.benchmark_group("per file");
    for o in &options {
        let name = o.files[0]
            .strip_prefix(corpus())
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        group.bench_function(name, |b| {
            b.iter(|| std::hint::black_box(load(o).expect("loads")))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
