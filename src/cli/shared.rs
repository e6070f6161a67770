//! What several commands share (so that command files do not import each other).

use std::collections::BTreeMap;

use ic_core::plan::Plan;

/// Print a plan: stages of actions, then the placement member by member.
pub fn print_plan(plan: &Plan, compose: &str) {
    println!(
        "Plan for compose project {compose} in Incus project {}:",
        plan.incus_project
    );
    if plan.is_empty() {
        println!("  nothing to change");
    }
    for stage in &plan.stages {
        println!("  {}:", stage.title);
        for a in &stage.actions {
            println!("    {a}");
        }
    }
    if !plan.unchanged.is_empty() {
        println!("  unchanged: {}", plan.unchanged.join(", "));
    }
    let mut by_member: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (member, name, service) in &plan.placement {
        by_member
            .entry(member)
            .or_default()
            .push(format!("{name} ({service})"));
    }
    if !by_member.is_empty() {
        println!("Placement:");
        for (member, items) in by_member {
            println!("  {member}: {}", items.join(", "));
        }
    }
}
