//! Loader features end to end, on an in-memory file system: discovery, env files, project
//! names, profiles, multi-file merge, extends, include, normalisation, deploy folding, and the
//! error cases with their file, line and column.

use std::collections::BTreeMap;
use std::path::PathBuf;

use ic_compose::model::*;
use ic_compose::{LoadErrors, LoadOptions, MemFs, Project, load_with};

fn opts(files: &[&str]) -> LoadOptions {
    LoadOptions {
        files: files.iter().map(PathBuf::from).collect(),
        working_dir: PathBuf::from("/proj"),
        environment: BTreeMap::from([("HOME".to_string(), "/home/u".to_string())]),
        interpolate: true,
        ..LoadOptions::default()
    }
}

fn fs1(text: &str) -> MemFs {
    MemFs::default().with("/proj/compose.yaml", text)
}

fn ok(fs: &MemFs, o: &LoadOptions) -> Project {
    load_with(o, fs).unwrap_or_else(|e| panic!("load failed:\n{e}"))
}

fn err(fs: &MemFs, o: &LoadOptions) -> LoadErrors {
    match load_with(o, fs) {
        Ok(p) => panic!("expected errors, loaded {p:?}"),
        Err(e) => e,
    }
}

fn one(text: &str) -> Project {
    ok(&fs1(text), &opts(&[]))
}

fn one_err(text: &str) -> LoadErrors {
    err(&fs1(text), &opts(&[]))
}

#[test]
fn discovery_finds_compose_yaml_in_parents_with_its_override() {
    let fs = MemFs::default()
        .with("/proj/compose.yaml", "services:\n  web:\n    image: a\n")
        .with(
            "/proj/compose.override.yaml",
            "services:\n  web:\n    image: b\n",
        );
    let mut o = opts(&[]);
    o.working_dir = PathBuf::from("/proj/sub/dir");
    let p = ok(&fs, &o);
    assert_eq!(p.services["web"].image.as_deref(), Some("b"));
    assert_eq!(p.name, "proj");
    assert_eq!(p.files.len(), 2);
}

#[test]
fn docker_compose_yml_is_found_when_compose_yaml_is_absent() {
    let fs = MemFs::default().with(
        "/proj/docker-compose.yml",
        "services:\n  web:\n    image: a\n",
    );
    assert_eq!(ok(&fs, &opts(&[])).services.len(), 1);
}

#[test]
fn compose_file_variable_lists_files_with_the_path_separator() {
    let fs = MemFs::default()
        .with("/proj/a.yml", "services:\n  web:\n    image: a\n")
        .with("/proj/b.yml", "services:\n  web:\n    image: b\n");
    let mut o = opts(&[]);
    o.environment
        .insert("COMPOSE_FILE".into(), "a.yml:b.yml".into());
    assert_eq!(ok(&fs, &o).services["web"].image.as_deref(), Some("b"));
}

#[test]
fn standard_input_is_a_compose_file() {
    let mut o = opts(&["-"]);
    o.stdin = Some("services:\n  web:\n    image: from-stdin\n".into());
    assert_eq!(
        ok(&MemFs::default(), &o).services["web"].image.as_deref(),
        Some("from-stdin")
    );
}

#[test]
fn dot_env_feeds_interpolation_and_the_environment_overrides_it() {
    let fs = fs1("services:\n  web:\n    image: \"${IMG}:${TAG}\"\n")
        .with("/proj/.env", "IMG=nginx\nTAG=1\n");
    let mut o = opts(&[]);
    assert_eq!(
        ok(&fs, &o).services["web"].image.as_deref(),
        Some("nginx:1")
    );
    o.environment.insert("TAG".into(), "2".into());
    assert_eq!(
        ok(&fs, &o).services["web"].image.as_deref(),
        Some("nginx:2")
    );
}

#[test]
fn env_file_flag_replaces_dot_env() {
    let fs = fs1("services:\n  web:\n    image: \"${IMG}\"\n")
        .with("/proj/.env", "IMG=from-dotenv\n")
        .with("/proj/prod.env", "IMG=from-prod\n");
    let mut o = opts(&[]);
    o.env_files = vec![PathBuf::from("prod.env")];
    assert_eq!(
        ok(&fs, &o).services["web"].image.as_deref(),
        Some("from-prod")
    );
}

#[test]
fn interpolation_is_skipped_with_no_interpolate_and_keys_are_never_interpolated() {
    let mut o = opts(&[]);
    o.interpolate = false;
    let p = ok(&fs1("services:\n  web:\n    image: \"${X}\"\n"), &o);
    assert_eq!(p.services["web"].image.as_deref(), Some("${X}"));
    let p = one("services:\n  web:\n    image: a\n    environment:\n      $$KEY: v\n");
    assert!(p.services["web"].environment.contains_key("$$KEY"));
}

#[test]
fn unset_variables_warn_with_their_position() {
    let p =
        one("services:\n  web:\n    image: \"nginx${SUFFIX}\"\n    labels: [\"a=${SUFFIX}\"]\n");
    assert_eq!(
        p.warnings.len(),
        1,
        "one warning per variable: {:?}",
        p.warnings
    );
    assert_eq!(p.services["web"].image.as_deref(), Some("nginx"));
    let w = &p.warnings[0];
    assert_eq!(
        (w.line, w.col, w.path.as_str()),
        (3, 12, "services.web.image")
    );
    assert!(w.message.contains("SUFFIX"));
}

#[test]
fn a_missing_required_variable_is_an_error_naming_it_and_where() {
    let e = one_err(
        "services:\n  web:\n    image: a\n    environment:\n      DOMAIN: \"${DOMAIN?set DOMAIN}\"\n",
    );
    let d = &e.0[0];
    assert_eq!((d.line, d.col), (5, 15));
    assert_eq!(d.path, "services.web.environment.DOMAIN");
    assert!(
        d.message.contains("DOMAIN") && d.message.contains("set DOMAIN"),
        "{d}"
    );
    assert!(
        d.to_string()
            .starts_with("/proj/compose.yaml:5:15: services.web.environment.DOMAIN: ")
    );
}

#[test]
fn project_name_precedence_and_normalisation() {
    let fs = MemFs::default().with(
        "/work/My Project.v2/compose.yaml",
        "services:\n  web:\n    image: a\n",
    );
    let mut o = opts(&[]);
    o.working_dir = PathBuf::from("/work/My Project.v2");
    assert_eq!(ok(&fs, &o).name, "myprojectv2");
    let fs = fs1("name: fromfile\nservices:\n  web:\n    image: a\n");
    let mut o = opts(&[]);
    assert_eq!(ok(&fs, &o).name, "fromfile");
    o.environment
        .insert("COMPOSE_PROJECT_NAME".into(), "fromenv".into());
    assert_eq!(ok(&fs, &o).name, "fromenv");
    o.project_name = Some("fromflag".into());
    assert_eq!(ok(&fs, &o).name, "fromflag");
    o.project_name = Some("Bad Name".into());
    let e = err(&fs, &o);
    assert!(e.0[0].message.contains("invalid project name"));
}

#[test]
fn profiles_enable_services_from_flags_and_compose_profiles() {
    let text = "services:\n  web:\n    image: a\n  debug:\n    image: b\n    profiles: [dev]\n  seed:\n    image: c\n    profiles: [seed]\n";
    let p = one(text);
    assert_eq!(p.services.keys().collect::<Vec<_>>(), vec!["web"]);
    assert_eq!(p.all_profiles, vec!["dev".to_string(), "seed".to_string()]);
    let mut o = opts(&[]);
    o.profiles = vec!["dev".into()];
    o.environment
        .insert("COMPOSE_PROFILES".into(), "seed".into());
    assert_eq!(ok(&fs1(text), &o).services.len(), 3);
}

#[test]
fn anchors_merge_keys_and_extension_fields_are_kept() {
    let p = one(
        "x-common: &common\n  image: base\n  environment: {A: '1'}\n  x-incus: {profile: big}\nservices:\n  web:\n    <<: *common\n    environment: {B: '2'}\n",
    );
    let web = &p.services["web"];
    assert_eq!(web.image.as_deref(), Some("base"));
    assert_eq!(
        web.environment.len(),
        1,
        "explicit key wins over the merged one"
    );
    assert_eq!(web.extensions["x-incus"]["profile"], "big");
    assert_eq!(p.extensions["x-common"]["image"], "base");
}

#[test]
fn multi_file_merge_follows_compose_rules() {
    let fs = MemFs::default()
        .with(
            "/proj/a.yml",
            "services:\n  web:\n    image: a\n    command: [x, y]\n    ports: ['80:80']\n    volumes: ['data:/data']\n    environment: [A=1, B=2]\n    labels: {l1: a}\n    healthcheck: {test: [CMD, a], interval: 5s}\nvolumes:\n  data: {}\n  other: {}\n",
        )
        .with(
            "/proj/b.yml",
            "services:\n  web:\n    command: z\n    ports: ['80:80', '443:443']\n    volumes: ['other:/data']\n    environment: {B: '3'}\n    labels: [l2=b]\n    healthcheck: {test: [CMD, b]}\n",
        );
    let p = ok(&fs, &opts(&["a.yml", "b.yml"]));
    let web = &p.services["web"];
    assert_eq!(web.command, Some(vec!["z".to_string()]));
    assert_eq!(web.ports.len(), 2);
    assert_eq!(web.volumes.len(), 1);
    assert_eq!(web.volumes[0].source.as_deref(), Some("other"));
    assert_eq!(web.environment["A"].as_deref(), Some("1"));
    assert_eq!(web.environment["B"].as_deref(), Some("3"));
    assert_eq!(web.labels.len(), 2);
    let hc = web.healthcheck.as_ref().unwrap();
    assert_eq!(hc.test, vec!["CMD".to_string(), "b".to_string()]);
    assert_eq!(hc.interval.map(|d| d.0.as_secs()), Some(5));
}

#[test]
fn reset_and_override_tags_apply_across_files() {
    let fs = MemFs::default()
        .with("/proj/a.yml", "services:\n  web:\n    image: a\n    ports: ['80:80']\n    environment: {A: '1', B: '2'}\n")
        .with("/proj/b.yml", "services:\n  web:\n    ports: !reset []\n    environment: !override {C: '3'}\n");
    let p = ok(&fs, &opts(&["a.yml", "b.yml"]));
    let web = &p.services["web"];
    assert!(web.ports.is_empty());
    assert_eq!(web.environment.keys().collect::<Vec<_>>(), vec!["C"]);
}

#[test]
fn extends_in_the_same_file_and_from_another_file() {
    let fs = fs1(
        "services:\n  base:\n    image: base\n    environment: {A: '1'}\n  web:\n    extends: base\n    environment: {B: '2'}\n  api:\n    extends:\n      file: common/services.yml\n      service: common\n",
    )
    .with(
        "/proj/common/services.yml",
        "services:\n  common:\n    image: common\n    volumes: ['./data:/data']\n    env_file: vars.env\n",
    )
    .with("/proj/common/vars.env", "FROM_FILE=yes\n");
    let p = ok(&fs, &opts(&[]));
    let web = &p.services["web"];
    assert_eq!(web.image.as_deref(), Some("base"));
    assert_eq!(web.environment.len(), 2);
    let api = &p.services["api"];
    assert_eq!(api.image.as_deref(), Some("common"));
    assert_eq!(
        api.volumes[0].source.as_deref(),
        Some("/proj/common/data"),
        "paths rebased on the extended file"
    );
    assert_eq!(api.environment["FROM_FILE"].as_deref(), Some("yes"));
}

#[test]
fn extends_cycles_are_errors() {
    let e = one_err(
        "services:\n  a:\n    image: x\n    extends: b\n  b:\n    image: y\n    extends: a\n",
    );
    assert!(
        e.0.iter().any(|d| d.message.contains("extends cycle")),
        "{e}"
    );
}

#[test]
fn include_loads_a_sub_project_with_its_own_directory_and_env_file() {
    let fs = fs1("include:\n  - sub/compose.yaml\nservices:\n  web:\n    image: web\n    depends_on: [db]\n")
        .with("/proj/sub/compose.yaml", "services:\n  db:\n    image: \"postgres:${PG}\"\n    volumes: ['./pgdata:/var/lib/postgresql/data']\n")
        .with("/proj/sub/.env", "PG=16\n");
    let p = ok(&fs, &opts(&[]));
    let db = &p.services["db"];
    assert_eq!(db.image.as_deref(), Some("postgres:16"));
    assert_eq!(db.volumes[0].source.as_deref(), Some("/proj/sub/pgdata"));
}

#[test]
fn include_conflicts_are_errors() {
    let fs = fs1("include: [sub.yml]\nservices:\n  db:\n    image: mine\n")
        .with("/proj/sub.yml", "services:\n  db:\n    image: theirs\n");
    let e = err(&fs, &opts(&[]));
    assert!(e.0[0].message.contains("conflicts"), "{e}");
    assert_eq!(e.0[0].line, 3);
}

#[test]
fn short_syntax_is_normalised_to_long_form() {
    let p = one(
        "services:\n  web:\n    image: a\n    ports:\n      - 8080:80\n      - 127.0.0.1:53:53/udp\n      - '3000-3001'\n    volumes:\n      - ./site:/usr/share/nginx/html:ro\n      - cache:/cache\n      - /anon\n      - ~/m:/m\n    environment: [A=1, B]\n    labels: [x=y]\n    depends_on:\n      db: {condition: service_healthy, restart: true}\n    networks: [front]\n    secrets: [s]\n    env_file: [{path: e.env, required: false}]\n    command: echo 'hello world'\n  db:\n    image: b\nnetworks:\n  front: {}\nvolumes:\n  cache: {}\nsecrets:\n  s: {file: ./s.txt}\n",
    );
    let web = &p.services["web"];
    assert_eq!(web.ports.len(), 4);
    assert_eq!(
        web.ports[0].published,
        Some(PortRange {
            start: 8080,
            end: 8080
        })
    );
    assert_eq!(web.ports[1].host_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(web.ports[1].protocol, "udp");
    assert_eq!(web.ports[3].target, 3001);
    assert_eq!(web.volumes[0].kind, VolumeType::Bind);
    assert_eq!(web.volumes[0].source.as_deref(), Some("/proj/site"));
    assert!(web.volumes[0].read_only);
    assert_eq!(web.volumes[1].kind, VolumeType::Volume);
    assert_eq!(web.volumes[2].source, None);
    assert_eq!(web.volumes[3].source.as_deref(), Some("/home/u/m"));
    assert_eq!(web.environment["B"], None);
    assert_eq!(web.labels["x"], "y");
    let dep = &web.depends_on["db"];
    assert_eq!(dep.condition, DependencyCondition::ServiceHealthy);
    assert!(dep.restart && dep.required);
    assert!(web.networks.contains_key("front"));
    assert_eq!(web.secrets[0].source, "s");
    assert_eq!(web.secrets[0].secret_target(), "/run/secrets/s");
    assert!(!web.env_file[0].required);
    assert_eq!(
        web.command,
        Some(vec!["echo".to_string(), "hello world".to_string()])
    );
    assert_eq!(p.secrets["s"].file.as_deref(), Some("/proj/s.txt"));
    assert_eq!(p.networks["front"].name, "proj_front");
    assert_eq!(
        p.services["db"].networks.keys().collect::<Vec<_>>(),
        vec!["default"]
    );
    assert_eq!(p.networks["default"].name, "proj_default");
}

#[test]
fn deploy_is_fully_typed_and_numbers_may_be_strings() {
    let mut o = opts(&[]);
    o.environment.insert("N".into(), "3".into());
    let p = ok(
        &fs1(
            "services:\n  web:\n    image: a\n    deploy:\n      mode: replicated\n      replicas: ${N}\n      endpoint_mode: dnsrr\n      labels: [a=b]\n      placement:\n        constraints: [node.labels.zone == a, node.role!=manager]\n        preferences: [{spread: node.labels.zone}, {spread: instanceId}]\n        max_replicas_per_node: '2'\n      resources:\n        limits: {cpus: '0.5', memory: 1.5G, pids: 100}\n        reservations:\n          cpus: 0.25\n          memory: 64m\n          generic_resources: [{discrete_resource_spec: {kind: gpu, value: 2}}]\n          devices: [{capabilities: [gpu], count: all}]\n      restart_policy: {condition: on-failure, delay: 5s, max_attempts: 3, window: 1m}\n      update_config: {parallelism: 2, delay: 10s, failure_action: rollback, monitor: 1h5m30s20ms, max_failure_ratio: 0.1, order: start-first}\n      rollback_config: {parallelism: 1, order: stop-first}\n",
        ),
        &o,
    );
    let d = p.services["web"].deploy.clone().unwrap();
    assert_eq!(d.replicas, Some(3));
    assert_eq!(d.endpoint_mode.as_deref(), Some("dnsrr"));
    assert_eq!(d.placement.constraints.len(), 2);
    assert_eq!(
        d.placement.preferences[1].over,
        placement::SpreadOver::Member
    );
    assert_eq!(d.placement.max_replicas_per_node, Some(2));
    let l = d.resources.limits.unwrap();
    assert_eq!(
        (l.cpus, l.memory, l.pids),
        (Some(0.5), Some(ByteSize(1_610_612_736)), Some(100))
    );
    let r = d.resources.reservations.unwrap();
    assert_eq!(r.memory, Some(ByteSize(64 << 20)));
    assert_eq!(
        r.generic_resources[0],
        GenericResource {
            kind: "gpu".into(),
            value: 2
        }
    );
    assert_eq!(r.devices[0].count, Some(-1));
    let rp = d.restart_policy.unwrap();
    assert_eq!(
        (rp.condition, rp.max_attempts),
        (RestartCondition::OnFailure, Some(3))
    );
    assert_eq!(rp.window.map(|w| w.0.as_secs()), Some(60));
    let u = d.update_config.unwrap();
    assert_eq!(u.failure_action, Some(FailureAction::Rollback));
    assert_eq!(u.order, Some(UpdateOrder::StartFirst));
    assert_eq!(u.monitor.map(|m| m.0.as_millis()), Some(3_930_020));
    assert_eq!(
        d.rollback_config.unwrap().order,
        Some(UpdateOrder::StopFirst)
    );
}

#[test]
fn service_level_twins_fold_into_deploy() {
    let p = one(
        "services:\n  web:\n    image: a\n    scale: 2\n    cpus: 1.5\n    mem_limit: 1g\n    mem_reservation: 512m\n    pids_limit: 50\n    restart: on-failure:4\n",
    );
    let d = p.services["web"].deploy.clone().unwrap();
    assert_eq!(d.replicas, Some(2));
    let l = d.resources.limits.unwrap();
    assert_eq!(
        (l.cpus, l.memory, l.pids),
        (Some(1.5), Some(ByteSize(1 << 30)), Some(50))
    );
    assert_eq!(
        d.resources.reservations.unwrap().memory,
        Some(ByteSize(512 << 20))
    );
    let rp = d.restart_policy.unwrap();
    assert_eq!(
        (rp.condition, rp.max_attempts),
        (RestartCondition::OnFailure, Some(4))
    );
    for (restart, cond) in [
        ("no", RestartCondition::None),
        ("always", RestartCondition::Any),
        ("unless-stopped", RestartCondition::Any),
    ] {
        let p = one(&format!(
            "services:\n  web:\n    image: a\n    restart: \"{restart}\"\n"
        ));
        assert_eq!(
            p.services["web"]
                .deploy
                .clone()
                .unwrap()
                .restart_policy
                .unwrap()
                .condition,
            cond
        );
    }
}

#[test]
fn conflicting_twins_are_errors() {
    let e =
        one_err("services:\n  web:\n    image: a\n    scale: 2\n    deploy:\n      replicas: 3\n");
    assert_eq!(
        (e.0[0].line, e.0[0].path.as_str()),
        (4, "services.web.scale")
    );
    let e = one_err(
        "services:\n  web:\n    image: a\n    mem_limit: 1g\n    deploy: {resources: {limits: {memory: 2g}}}\n",
    );
    assert!(e.0[0].message.contains("mem_limit"));
}

#[test]
fn jobs_are_recognised_and_reported_as_unsupported() {
    let p = one("services:\n  web:\n    image: a\n    deploy:\n      mode: replicated-job\n");
    assert_eq!(
        p.services["web"].deploy.clone().unwrap().mode,
        DeployMode::ReplicatedJob
    );
    assert!(
        p.warnings
            .iter()
            .any(|w| w.message.contains("not supported yet"))
    );
}

#[test]
fn global_with_replicas_is_an_error() {
    let e = one_err(
        "services:\n  web:\n    image: a\n    deploy:\n      mode: global\n      replicas: 2\n",
    );
    assert_eq!((e.0[0].line, e.0[0].col), (6, 17));
    assert!(e.0[0].message.contains("global"));
}

#[test]
fn container_name_with_several_replicas_is_an_error() {
    let e = one_err(
        "services:\n  web:\n    image: a\n    container_name: web\n    deploy: {replicas: 2}\n",
    );
    assert_eq!(
        (e.0[0].line, e.0[0].path.as_str()),
        (4, "services.web.container_name")
    );
}

/// docker compose's `config` prints any constraint (Swarm refuses bad ones when it deploys):
/// loading accepts them, `up`'s check (`validate::before_up`) refuses them at their line.
#[test]
fn bad_placement_constraints_are_errors_at_their_line() {
    let project = one(
        "services:\n  web:\n    image: a\n    deploy:\n      placement:\n        constraints:\n          - node.role == manager\n          - node.zone == a\n          - node.hostname = x\n",
    );
    let e = ic_compose::validate::before_up(&project).expect_err("up refuses them");
    assert_eq!(e.len(), 2, "{e}");
    assert_eq!((e.0[0].line, e.0[0].col), (8, 13));
    assert_eq!(e.0[0].path, "services.web.deploy.placement.constraints.1");
    assert!(e.0[0].message.contains("unknown constraint key"));
    assert_eq!(e.0[1].line, 9);
}

#[test]
fn undefined_references_are_errors_with_hints() {
    let e = one_err(
        "services:\n  web:\n    image: a\n    networks: [nope]\n    volumes: ['data:/data']\n    secrets: [s]\n    configs: [c]\n    depends_on: [ghost]\n",
    );
    let msgs: Vec<String> = e.iter().map(|d| d.message.clone()).collect();
    assert_eq!(e.len(), 5, "{e}");
    assert!(
        msgs.iter()
            .any(|m| m.contains("undefined network \"nope\""))
    );
    assert!(msgs.iter().any(|m| m.contains("undefined volume \"data\"")));
    assert!(msgs.iter().any(|m| m.contains("undefined secret \"s\"")));
    assert!(msgs.iter().any(|m| m.contains("undefined config \"c\"")));
    assert!(
        msgs.iter()
            .any(|m| m.contains("undefined service \"ghost\""))
    );
    let net = e.iter().find(|d| d.message.contains("network")).unwrap();
    assert_eq!((net.line, net.col), (4, 16));
    assert!(net.hint.is_some());
}

#[test]
fn dependency_cycles_are_errors() {
    let e = one_err(
        "services:\n  a:\n    image: x\n    depends_on: [b]\n  b:\n    image: y\n    depends_on: [c]\n  c:\n    image: z\n    depends_on: [a]\n",
    );
    assert!(e.0[0].message.contains("dependency cycle"), "{e}");
}

#[test]
fn several_errors_in_one_file_are_reported_together_in_order() {
    let e = one_err(
        "services:\n  web:\n    imag: a\n    ports: [\"http\"]\n    deploy:\n      replicas: three\n",
    );
    let lines: Vec<u32> = e.iter().map(|d| d.line).collect();
    // 2: no image (the typo), 3: the typo, 4: the port, 6: the replicas.
    assert_eq!(lines, vec![2, 3, 4, 6], "{e}");
    assert_eq!(
        e.0[0].message,
        "service \"web\" has neither an image nor a build context"
    );
    assert_eq!(e.0[1].hint.as_deref(), Some("did you mean \"image\"?"));
    assert!(e.0[2].message.contains("invalid port \"http\""), "{e}");
    assert!(e.0[3].message.contains("expected an integer"), "{e}");
    assert!(
        e.to_string().contains(
            "compose.yaml:6:17: services.web.deploy.replicas: expected an integer, found \"three\""
        ),
        "{e}"
    );
}

#[test]
fn yaml_syntax_errors_have_a_position() {
    let e = one_err("services:\n  web:\n    image: [a\n  db: {}\n");
    assert!(e.0[0].line >= 3);
    assert!(e.0[0].message.starts_with("invalid YAML"));
}

#[test]
fn bad_units_are_errors() {
    let e = one_err(
        "services:\n  web:\n    image: a\n    stop_grace_period: 10 seconds\n    mem_limit: 12q\n",
    );
    assert_eq!(e.len(), 2, "{e}");
    assert!(e.0[0].message.contains("invalid duration"));
    assert!(e.0[1].message.contains("invalid byte size"));
}

#[test]
fn a_service_needs_an_image_or_a_build() {
    let e = one_err("services:\n  web:\n    ports: ['80']\n");
    assert!(e.0[0].message.contains("neither an image nor a build"));
}

#[test]
fn env_files_merge_under_inline_environment_and_missing_ones_are_errors() {
    let fs = fs1(
        "services:\n  web:\n    image: a\n    env_file: [web.env]\n    environment: {A: inline}\n",
    )
    .with("/proj/web.env", "A=file\nB=file\n");
    let p = ok(&fs, &opts(&[]));
    let env = &p.services["web"].environment;
    assert_eq!(env["A"].as_deref(), Some("inline"));
    assert_eq!(env["B"].as_deref(), Some("file"));
    let e = one_err("services:\n  web:\n    image: a\n    env_file: missing.env\n");
    assert!(e.0[0].message.contains("missing.env"));
    assert_eq!(e.0[0].line, 4);
}

#[test]
fn build_contexts_resolve_against_the_project_directory() {
    let p = one(
        "services:\n  web:\n    build: ./app\n  api:\n    build:\n      context: api\n      args: [X=1]\n",
    );
    assert_eq!(
        p.services["web"].build.as_ref().unwrap().context,
        "/proj/app"
    );
    let api = p.services["api"].build.as_ref().unwrap();
    assert_eq!(api.context, "/proj/api");
    assert_eq!(api.args["X"].as_deref(), Some("1"));
}

#[test]
fn config_output_is_stable_and_sorted() {
    let a = one(
        "services:\n  zeta:\n    image: z\n  alpha:\n    image: a\n    environment: {Z: '1', A: '2'}\n",
    );
    let yaml = ic_compose::output::to_yaml_string(&a);
    assert!(yaml.find("alpha:").unwrap() < yaml.find("zeta:").unwrap());
    assert_eq!(yaml, ic_compose::output::to_yaml_string(&a));
    let reloaded = one(&yaml);
    assert_eq!(reloaded.services, a.services);
}

#[test]
fn config_prints_the_service_level_twins_unfolded_while_the_model_folds_them() {
    let p = one(
        "services:\n  web:\n    image: a\n    restart: on-failure:3\n    mem_limit: 512m\n    scale: 2\n  \
         db:\n    image: b\n    deploy:\n      resources:\n        limits:\n          memory: 1g\n",
    );
    // What later stages see: the twins folded into deploy.
    let d = p.services["web"].deploy.as_ref().expect("folded deploy");
    assert_eq!(d.replicas, Some(2));
    assert_eq!(
        d.restart_policy
            .as_ref()
            .map(|r| (r.condition, r.max_attempts)),
        Some((RestartCondition::OnFailure, Some(3)))
    );
    assert_eq!(
        d.resources.limits.as_ref().and_then(|l| l.memory),
        Some(ByteSize(512 * 1024 * 1024))
    );
    // What config prints: as written, as docker compose v2 prints it.
    let yaml = ic_compose::output::to_yaml_string(&p);
    assert_eq!(
        yaml,
        "name: proj\nservices:\n  db:\n    deploy:\n      resources:\n        limits:\n          \
         memory: \"1073741824\"\n    image: b\n    networks:\n      default: null\n  web:\n    \
         image: a\n    mem_limit: \"536870912\"\n    networks:\n      default: null\n    restart: \
         on-failure:3\n    scale: 2\nnetworks:\n  default:\n    name: proj_default\n"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ic_compose::output::to_json_string(&p, false)).expect("JSON");
    assert!(json["services"]["web"].get("deploy").is_none());
    assert_eq!(json["services"]["web"]["restart"], "on-failure:3");
    assert_eq!(
        json["services"]["db"]["deploy"]["resources"]["limits"]["memory"],
        "1073741824"
    );
    // Printed and loaded again: the same model, folding included.
    assert_eq!(one(&yaml).services, p.services);
}

#[test]
fn project_directory_sets_the_base_for_paths_env_and_name() {
    let fs = MemFs::default()
        .with(
            "/files/compose.yaml",
            "services:\n  web:\n    image: \"${IMG}\"\n    volumes: ['./data:/data']\n",
        )
        .with("/elsewhere/app/.env", "IMG=from-project-dir\n");
    let mut o = opts(&["/files/compose.yaml"]);
    o.project_directory = Some(PathBuf::from("/elsewhere/app"));
    let p = ok(&fs, &o);
    assert_eq!(p.name, "app");
    assert_eq!(p.services["web"].image.as_deref(), Some("from-project-dir"));
    assert_eq!(
        p.services["web"].volumes[0].source.as_deref(),
        Some("/elsewhere/app/data")
    );
}

#[test]
fn secrets_and_configs_merge_by_target_and_entrypoint_is_replaced() {
    let fs = MemFs::default()
        .with(
            "/proj/a.yml",
            "services:\n  web:\n    image: a\n    entrypoint: [a, b]\n    secrets: [s1, {source: s2, target: /x}]\n    configs: [{source: c1, target: /etc/c}]\nsecrets:\n  s1: {file: s1}\n  s2: {file: s2}\n  s3: {file: s3}\nconfigs:\n  c1: {content: one}\n  c2: {content: two}\n",
        )
        .with(
            "/proj/b.yml",
            "services:\n  web:\n    entrypoint: c\n    secrets: [{source: s3, target: /x}]\n    configs: [{source: c2, target: /etc/c}]\n",
        );
    let p = ok(&fs, &opts(&["a.yml", "b.yml"]));
    let web = &p.services["web"];
    assert_eq!(web.entrypoint, Some(vec!["c".to_string()]));
    let secrets: Vec<&str> = web.secrets.iter().map(|s| s.source.as_str()).collect();
    assert_eq!(secrets, vec!["s1", "s3"]);
    assert_eq!(web.configs.len(), 1);
    assert_eq!(web.configs[0].source, "c2");
    assert_eq!(p.configs["c2"].content.as_deref(), Some("two"));
}

#[test]
fn a_service_may_extend_an_included_service() {
    let fs = fs1("include: [lib.yml]\nservices:\n  web:\n    extends: base\n    ports: ['80']\n")
        .with("/proj/lib.yml", "services:\n  base:\n    image: shared\n");
    let p = ok(&fs, &opts(&[]));
    assert_eq!(p.services["web"].image.as_deref(), Some("shared"));
}

#[test]
fn an_unknown_pull_policy_is_an_error_at_its_line() {
    let e = one_err("services:\n  web:\n    image: a\n    pull_policy: sometimes\n");
    assert_eq!(e.len(), 1, "{e}");
    assert_eq!(
        (e.0[0].line, e.0[0].col, e.0[0].path.as_str()),
        (4, 18, "services.web.pull_policy")
    );
    assert!(e.0[0].message.contains("sometimes"), "{e}");
    for ok in [
        "always",
        "never",
        "missing",
        "if_not_present",
        "daily",
        "every_12h",
    ] {
        let text = format!("services:\n  web:\n    image: a\n    pull_policy: {ok}\n");
        let p = one(&text);
        assert_eq!(p.services["web"].pull_policy.as_deref(), Some(ok));
    }
}

/// A relative container path loads (docker compose prints it) and `up` refuses it, naming its
/// line; services left out by their profile are not checked.
#[test]
fn relative_container_paths_are_refused_by_up_only() {
    let project = one(
        "services:\n  web:\n    image: a\n    volumes:\n      - cache\n      - data:relative\n  extra:\n    image: a\n    profiles: [debug]\n    volumes: [other]\nvolumes:\n  data:\n",
    );
    let e = ic_compose::validate::before_up(&project).expect_err("up refuses them");
    let at: Vec<(u32, &str)> = e.iter().map(|d| (d.line, d.path.as_str())).collect();
    assert_eq!(
        at,
        [
            (5, "services.web.volumes.0.target"),
            (6, "services.web.volumes.1.target")
        ]
    );
    assert!(e.0[0].message.contains("must be absolute"), "{e}");
    let fine = one("services:\n  web:\n    image: a\n    volumes: [/cache]\n");
    assert!(ic_compose::validate::before_up(&fine).is_ok());
}
