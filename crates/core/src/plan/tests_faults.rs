//! The planner under crashes and interleaved runs (what the fault suite, `tests/faults.rs`,
//! checks against Incus): a run is killed after any number of its actions, with the action
//! under way half done (an instance created but not prepared: stopped, without its spec hash,
//! which the engine writes last; a removal that stopped the instance but did not delete it);
//! then another run, possibly of another spec and count, plans from what is left. It must
//! converge to exactly its declared replicas, prepared and running, without deleting a
//! running prepared replica that is the only one serving its slot, and then have nothing
//! more to do.

use proptest::prelude::*;

use super::tests_watch::{facts, load};
use super::*;
use crate::keys::{LABEL_HASH, LABEL_SERVICE, LABEL_SLOT};
use crate::schedule::Member;

fn project(n: u32, version: u32) -> ic_compose::Project {
    load(&format!(
        "name: shop\nservices:\n  web:\n    image: busybox\n    environment: {{V: \"{version}\"}}\n    deploy:\n      replicas: {n}\n"
    ))
}

fn plan_of(p: &ic_compose::Project, obs: &Observed) -> (Plan, String) {
    let o = PlanOptions {
        version: "0.1.0".into(),
        ..Default::default()
    };
    let d = desired(p, &facts(), &o).unwrap_or_else(|e| panic!("{e}"));
    let hash = d.services[0].hash.clone();
    (
        diff(&d, obs, &DiffOptions::default()).unwrap_or_else(|e| panic!("{e}")),
        hash,
    )
}

fn instance(p: &InstancePlan, prepared: bool) -> ObservedInstance {
    let mut config = p.config.clone();
    if !prepared {
        config.remove(LABEL_HASH);
    }
    ObservedInstance {
        name: p.name.clone(),
        location: p.member.clone(),
        running: prepared && p.start,
        config,
    }
}

/// Applies `plan` to `obs`: every action up to `crash` fully, the one at `crash` half (then
/// the run dies), none after. Replacements apply as the executor's stop-first worst case: the
/// old replica goes, then the new one is made.
fn apply(plan: &Plan, obs: &Observed, crash: Option<usize>) -> Observed {
    let mut out = obs.clone();
    for (k, a) in plan.actions().enumerate() {
        let half = crash == Some(k);
        if crash.is_some_and(|c| k > c) {
            break;
        }
        match a {
            Action::CreateProject { config, .. } => {
                out.project_exists = true;
                out.project_config = config.clone();
            }
            Action::CreateNetwork { name, config, .. } => out.networks.push(ObservedNetwork {
                name: name.clone(),
                managed: true,
                config: config.clone(),
                status: "Created".into(),
            }),
            Action::Create(p) => out.instances.push(instance(p, !half)),
            Action::Recreate(p) => {
                let old = p.old_name.clone().unwrap_or_else(|| p.name.clone());
                out.instances.retain(|i| i.name != old);
                out.instances.push(instance(p, !half));
            }
            Action::Start { name, .. } if !half => {
                for i in out.instances.iter_mut().filter(|i| &i.name == name) {
                    i.running = true;
                }
            }
            Action::Stop { name, .. } => {
                for i in out.instances.iter_mut().filter(|i| &i.name == name) {
                    i.running = false;
                }
            }
            Action::Remove { name, .. } if half => {
                for i in out.instances.iter_mut().filter(|i| &i.name == name) {
                    i.running = false;
                }
            }
            Action::Remove { name, .. } => out.instances.retain(|i| &i.name != name),
            _ => {}
        }
    }
    out
}

/// A running replica with `hash` that is the only running one of a slot the run keeps
/// (`kept`: the slots there after it) is never removed.
fn removes_no_lone_server(
    plan: &Plan,
    obs: &Observed,
    hash: &str,
    kept: &[String],
) -> Result<(), String> {
    let removed: Vec<&str> = plan
        .actions()
        .filter_map(|a| match a {
            Action::Remove { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    let serving = |i: &ObservedInstance| i.running && i.label(LABEL_HASH) == Some(hash);
    for name in &removed {
        let Some(i) = obs.instances.iter().find(|i| &i.name == name) else {
            continue;
        };
        let slot = i.label(LABEL_SLOT);
        if !serving(i) || !slot.is_some_and(|s| kept.iter().any(|k| k == s)) {
            continue;
        }
        let other = obs.instances.iter().any(|o| {
            o.name != i.name
                && o.label(LABEL_SLOT) == slot
                && serving(o)
                && !removed.contains(&o.name.as_str())
        });
        if !other {
            return Err(format!("{name} serves its slot alone and is removed"));
        }
    }
    Ok(())
}

fn members(n: usize) -> Vec<Member> {
    (1..=n).map(|i| Member::new(format!("node{i}"))).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn a_run_killed_after_any_action_is_finished_by_the_next_run_of_any_spec(
        n0 in 1u32..5, v0 in 0u32..2,
        na in 0u32..6, va in 0u32..3, crash in 0usize..16,
        nb in 0u32..6, vb in 0u32..3,
    ) {
        let start = Observed { clustered: true, members: members(3), ..Default::default() };
        let (p0, _) = plan_of(&project(n0, v0), &start);
        let deployed = apply(&p0, &start, None);
        // Run A dies at its action `crash` (or ends before).
        let (pa, _) = plan_of(&project(na, va), &deployed);
        let left = apply(&pa, &deployed, Some(crash));
        // Run B plans from what A left, and runs to its end.
        let b = project(nb, vb);
        let (pb, hash) = plan_of(&b, &left);
        let done = apply(&pb, &left, None);
        let kept: Vec<String> = done
            .instances
            .iter()
            .filter_map(|i| i.label(LABEL_SLOT).map(str::to_string))
            .collect();
        let lone = removes_no_lone_server(&pb, &left, &hash, &kept);
        prop_assert!(lone.is_ok(), "{:?}", lone);
        let web: Vec<&ObservedInstance> = done
            .instances
            .iter()
            .filter(|i| i.label(LABEL_SERVICE) == Some("web"))
            .collect();
        prop_assert_eq!(web.len(), nb as usize, "{:?}", web);
        prop_assert!(web.iter().all(|i| i.running && i.label(LABEL_HASH) == Some(hash.as_str())),
            "{:?}", web);
        let (again, _) = plan_of(&b, &done);
        prop_assert!(again.is_empty(), "{:?}", again.stages);
    }
}

/// `scale` plans with `--no-recreate`: a replica whose creation a killed run cut short (no
/// hash: it was never prepared, its files may be missing) is still remade, running or not, and
/// never taken in place (writing its hash would declare it prepared).
#[test]
fn a_replica_left_unprepared_is_remade_also_under_no_recreate() {
    let start = Observed {
        clustered: true,
        members: members(3),
        ..Default::default()
    };
    let p = project(3, 1);
    let (p0, _) = plan_of(&p, &start);
    let creates = p0
        .actions()
        .position(|a| matches!(a, Action::Create(_)))
        .expect("a create");
    for running in [false, true] {
        let mut left = apply(&p0, &start, Some(creates));
        let half = left
            .instances
            .iter_mut()
            .find(|i| i.label(LABEL_HASH).is_none())
            .expect("the half-made replica");
        half.running = running;
        let half = half.name.clone();
        let o = PlanOptions {
            version: "0.1.0".into(),
            ..Default::default()
        };
        let d = desired(&p, &facts(), &o).unwrap_or_else(|e| panic!("{e}"));
        let plan = diff(
            &d,
            &left,
            &DiffOptions {
                no_recreate: true,
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let remade = plan.actions().any(|a| match a {
            Action::Recreate(r) => r.old_name.as_deref() == Some(half.as_str()),
            _ => false,
        });
        assert!(
            remade,
            "running={running}: {half} must be remade: {:?}",
            plan.actions().collect::<Vec<_>>()
        );
    }
}
