//! The hostile-input corpus (`tests/hostile/`, see its README): each compose file is refused at
//! load with the expected file, line and field, or plans with no control character in any
//! planned config value.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ic_compose::{LoadOptions, load};
use ic_core::plan::{Action, DiffOptions, Observed, PlanOptions, ServerFacts, plan_up};
use ic_core::schedule::Member;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/hostile")
}

fn clean(what: &str, map: &BTreeMap<String, String>) {
    for (k, v) in map {
        let lines: Vec<&str> = if k == "raw.lxc" || k == "raw.dnsmasq" {
            v.split('\n').collect()
        } else {
            vec![v.as_str()]
        };
        for line in lines {
            assert!(
                !k.contains(char::is_control) && !line.contains(char::is_control),
                "{what}: {k} = {v:?} carries a control character"
            );
        }
    }
}

fn plan_is_clean(file: &Path, project: &ic_compose::Project) {
    let facts = ServerFacts {
        version: "6.0.4".into(),
        image_aliases: ["busybox".to_string()].into(),
        storage_pool: "data".into(),
        pools: BTreeMap::from([("data".into(), "dir".into())]),
        ..ServerFacts::default()
    };
    let observed = Observed {
        members: vec![Member::new("node1")],
        ..Observed::default()
    };
    let opts = PlanOptions {
        version: "0.1.0".into(),
        ..PlanOptions::default()
    };
    let plan = plan_up(project, &facts, &observed, &opts, &DiffOptions::default())
        .unwrap_or_else(|e| panic!("{}: planning failed: {e}", file.display()));
    let mut instances = 0;
    for a in plan.actions() {
        match a {
            Action::CreateNetwork { config, .. } => clean("network", config),
            Action::Create(p) => {
                instances += 1;
                clean(&p.name, &p.config);
                for props in p.devices.values() {
                    clean(&p.name, props);
                }
            }
            _ => {}
        }
    }
    assert!(instances > 0, "{}: nothing planned", file.display());
}

#[test]
fn every_hostile_file_is_refused_at_its_line_or_planned_harmlessly() {
    let dir = corpus();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "corpus too small: {files:?}");
    for file in files {
        let expect_path = file.with_extension("expect");
        let expect = std::fs::read_to_string(&expect_path)
            .unwrap_or_else(|e| panic!("{}: {e}", expect_path.display()));
        let options = LoadOptions {
            files: vec![file.clone()],
            working_dir: dir.clone(),
            interpolate: true,
            ..LoadOptions::default()
        };
        let project = load(&options).unwrap_or_else(|e| {
            panic!(
                "{}: the loader (and so `config`) must accept it: {e}",
                file.display()
            )
        });
        let found: Vec<String> = project.hostile.iter().map(ToString::to_string).collect();
        let shown = file.to_string_lossy().into_owned();
        let mut refused = 0;
        for line in expect.lines().filter(|l| !l.trim().is_empty()) {
            if line.trim() == "planned" {
                assert!(found.is_empty(), "{shown}: refused: {found:#?}");
                plan_is_clean(&file, &project);
                continue;
            }
            let rest = line
                .strip_prefix("refused ")
                .unwrap_or_else(|| panic!("{}: bad line {line:?}", expect_path.display()));
            let (at, field) = rest.split_once(' ').unwrap_or((rest, ""));
            refused += 1;
            let prefix = format!("{}:{at}:", project.files[0]);
            assert!(
                project
                    .hostile
                    .iter()
                    .any(|d| { d.to_string().starts_with(&prefix) && d.path == field }),
                "{shown}: expected an error at line {at} on {field:?}, found {found:#?}"
            );
        }
        assert_eq!(
            refused,
            project.hostile.len(),
            "{shown}: unexpected errors: {found:#?}"
        );
    }
}
