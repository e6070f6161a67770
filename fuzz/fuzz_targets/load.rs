//! Arbitrary bytes as a compose file, through the whole in-memory loading pipeline: YAML
//! parsing, interpolation, validation, canonicalisation, merging with an override file,
//! extends/include against an in-memory file system, normalisation and `config` rendering.
//! The loader must return a project or errors, never panic.

#![no_main]

use std::collections::BTreeMap;
use std::path::PathBuf;

use ic_compose::{LoadOptions, MemFs, load_with};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let fs = MemFs::default()
        .with("/p/compose.yaml", text)
        .with("/p/compose.override.yaml", "services:\n  web:\n    image: override\n")
        .with("/p/other.yaml", "services:\n  base:\n    image: base\n    ports: ['80']\n")
        .with("/p/.env", "A=1\nB=${A}2\n");
    let options = LoadOptions {
        working_dir: PathBuf::from("/p"),
        environment: BTreeMap::from([("HOME".to_string(), "/home/f".to_string())]),
        interpolate: true,
        ..LoadOptions::default()
    };
    if let Ok(project) = load_with(&options, &fs) {
        let yaml = ic_compose::output::to_yaml_string(&project);
        // The rendered project loads again.
        let again = MemFs::default().with("/p/compose.yaml", yaml);
        let _ = load_with(&options, &again);
    }
});
