//! Loading every compose file of the corpus (`../shared/corpus`), end to end, in memory from
//! the real files (read once), including interpolation, merging, validation and normalisation.

use ic_compose::corpus::dir as corpus;
use std::collections::BTreeMap;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use ic_compose::{LoadOptions, load};

fn bench(c: &mut Criterion) {
    let files = ic_compose::corpus::files(&corpus());
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
