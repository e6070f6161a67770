//! Reads one YAML file with the loader's YAML reader and prints each document as one line of
//! JSON, or the error:
//! `cargo run -p ic-compose --example yaml_to_json FILE`. Used by `scripts/yaml-test-suite`
//! to run the yaml-test-suite data through our reader.

use std::process::ExitCode;
use std::sync::Arc;

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: yaml_to_json FILE");
        return ExitCode::from(2);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{path}: {e}");
            return ExitCode::from(2);
        }
    };
    match ic_compose::yaml::parse_documents(&text, &Arc::from(path.as_str())) {
        Ok(documents) => {
            for node in documents {
                println!("{}", node.to_json());
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for d in errors {
                eprintln!("{d}");
            }
            ExitCode::FAILURE
        }
    }
}
