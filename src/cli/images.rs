//! `incus-compose images [SERVICES]`: the images the project's instances were made from.
//!
//! One row per instance: its service, the image as the compose file names it (`alias` or
//! `remote:alias`; for an instance whose service left the file, the aliases the image has in
//! the image store), the image fingerprint (`volatile.base_image`, 12 digits in the table)
//! and the image's size in the image store. `-q` prints the distinct fingerprints; `--format
//! json` everything, sizes in bytes.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use serde::Serialize;

use super::GlobalArgs;
use super::project::{Context, block_on};
use ic_core::keys::LABEL_SERVICE;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Output format
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Only the image fingerprints
    #[arg(short, long)]
    pub quiet: bool,
    /// Services to list (default: all)
    pub services: Vec<String>,
}

/// One row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub instance: String,
    pub service: String,
    pub image: String,
    pub fingerprint: String,
    /// Bytes; `None` when the image is no longer in the image store.
    pub size: Option<i64>,
}

/// `912.3KiB`, `1.5MiB` (binary units, like `incus image list`).
fn human_size(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.2}{}", UNITS[unit])
    }
}

fn table(rows: &[Row]) -> String {
    let head = ["INSTANCE", "SERVICE", "IMAGE", "FINGERPRINT", "SIZE"];
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            [
                r.instance.clone(),
                r.service.clone(),
                r.image.clone(),
                r.fingerprint.chars().take(12).collect(),
                r.size.map(human_size).unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut width = head.map(str::len);
    for c in &cells {
        for (w, s) in width.iter_mut().zip(c) {
            *w = (*w).max(s.len());
        }
    }
    let mut out = String::new();
    let mut line = |cols: [&str; 5]| {
        let parts: Vec<String> = cols
            .iter()
            .zip(width)
            .map(|(s, w)| format!("{s:<w$}"))
            .collect();
        out.push_str(parts.join("   ").trim_end());
        out.push('\n');
    };
    line(head);
    for c in &cells {
        line([&c[0], &c[1], &c[2], &c[3], &c[4]]);
    }
    out
}

pub fn run(global: &GlobalArgs, args: &ImagesArgs) -> anyhow::Result<ExitCode> {
    let ctx = Context::new(global)?;
    for s in &args.services {
        if !ctx.project.services.contains_key(s) {
            anyhow::bail!("no service {s:?} in compose project {}", ctx.project.name);
        }
    }
    let rows = block_on(async {
        let reached = super::select::reach(&ctx, &args.services, false).await?;
        reached.warn();
        let instances = reached.instances;
        // Images live in the `default` project unless the project has its own.
        let own_images = match ctx.base.get_project(&ctx.incus_project).await {
            Ok(p) => p.config.get("features.images").map(String::as_str) == Some("true"),
            Err(e) if e.is_not_found() => false,
            Err(e) => return Err(e).context("cannot read the Incus project"),
        };
        let image_project = if own_images {
            ctx.incus_project.as_str()
        } else {
            "default"
        };
        let store: BTreeMap<String, ic_incus::Image> = if instances.is_empty() {
            BTreeMap::new()
        } else {
            ctx.base
                .with_project(image_project)
                .images()
                .await
                .context("cannot list images")?
                .into_iter()
                .map(|i| (i.fingerprint.clone(), i))
                .collect()
        };
        let rows: Vec<Row> = instances
            .iter()
            .map(|i| {
                let service = i.config.get(LABEL_SERVICE).cloned().unwrap_or_default();
                let fingerprint = i
                    .config
                    .get("volatile.base_image")
                    .cloned()
                    .unwrap_or_default();
                let stored = store.get(&fingerprint);
                let image = ctx
                    .project
                    .services
                    .get(&service)
                    .and_then(|s| s.image.clone())
                    .or_else(|| {
                        stored.filter(|img| !img.aliases.is_empty()).map(|img| {
                            img.aliases
                                .iter()
                                .map(|a| a.name.as_str())
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                    })
                    .unwrap_or_else(|| "-".into());
                Row {
                    instance: i.name.clone(),
                    service,
                    image,
                    fingerprint,
                    size: stored.map(|img| img.size),
                }
            })
            .collect();
        Ok::<_, anyhow::Error>(rows)
    })??;
    let text = if args.quiet {
        let mut seen = std::collections::BTreeSet::new();
        let mut t = String::new();
        for r in &rows {
            if !r.fingerprint.is_empty() && seen.insert(&r.fingerprint) {
                t.push_str(&r.fingerprint);
                t.push('\n');
            }
        }
        t
    } else if args.format == Format::Json {
        format!("{}\n", serde_json::to_string_pretty(&rows)?)
    } else {
        table(&rows)
    };
    // A closed stdout (`| head`) is not an error worth a panic.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_binary_units() {
        assert_eq!(human_size(512), "512B");
        assert_eq!(human_size(933_888), "912.00KiB");
        assert_eq!(human_size(1_572_864), "1.50MiB");
    }

    #[test]
    fn table_shortens_fingerprints_and_aligns_columns() {
        let t = table(&[Row {
            instance: "web-1".into(),
            service: "web".into(),
            image: "testapp/v1".into(),
            fingerprint: "acaa58b890cb641331089ae191c1947d".into(),
            size: None,
        }]);
        assert_eq!(
            t,
            "INSTANCE   SERVICE   IMAGE        FINGERPRINT    SIZE\n\
             web-1      web       testapp/v1   acaa58b890cb   -\n"
        );
    }
}
