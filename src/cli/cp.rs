//! `incus-compose cp SERVICE:SRC DEST` / `cp SRC SERVICE:DEST`: copy files and directories
//! between a replica and the local filesystem, through the Incus file API.
//!
//! As `docker cp`: a directory is copied recursively (files, directories and symlinks, their
//! modes kept); when DEST is an existing directory the copy goes inside it under SRC's name,
//! otherwise it becomes DEST; `SRC/.` copies a directory's contents. Files written into an
//! instance belong to root unless `-a` keeps their local uid/gid; with `-a` files copied out
//! keep the instance's uid/gid (when allowed to). `--index N` picks replica N.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Args;
use ic_compose::model::DeployMode;
use ic_incus::{Client, FileContent, FileOptions};

use super::GlobalArgs;
use super::project::{Context, block_on};

#[derive(Debug, Args)]
pub struct CpArgs {
    /// Archive mode: keep uid/gid
    #[arg(short = 'a', long)]
    pub archive: bool,
    /// Which replica: N for `SERVICE-N`
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub index: usize,
    /// SERVICE:SRC or a local path
    pub source: String,
    /// SERVICE:DEST or a local path
    pub dest: String,
}

/// `SERVICE:PATH` -> (service, path); a local path (`./a:b`, `/x:y`) -> None.
fn split_remote(arg: &str) -> Option<(&str, &str)> {
    if arg.starts_with('/') || arg.starts_with('.') {
        return None;
    }
    let (service, path) = arg.split_once(':')?;
    (!service.is_empty() && !service.contains('/')).then_some((service, path))
}

/// The last component of `path` (`a/b/` -> `b`); `None` for `X/.` (copy the contents).
fn base_name(path: &str) -> Option<String> {
    let trimmed = path.trim_end_matches('/');
    if trimmed.ends_with("/.") || trimmed == "." {
        return None;
    }
    Path::new(trimmed)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
}

/// Joins an absolute instance path (relative ones are taken from `/`).
fn instance_path(path: &str) -> String {
    let p = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let trimmed = p.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".into()
    } else {
        trimmed.to_string()
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

#[derive(Default)]
struct Count {
    files: u64,
    dirs: u64,
    bytes: u64,
}

/// Copies instance path `src` to local path `dest` (which does not exist).
async fn pull(
    client: &Client,
    instance: &str,
    src: &str,
    dest: &Path,
    archive: bool,
    n: &mut Count,
) -> anyhow::Result<()> {
    let f = client
        .instance_file(instance, src)
        .await
        .with_context(|| format!("reading {instance}:{src}"))?;
    match &f.content {
        FileContent::File(bytes) => {
            write_no_follow(dest, bytes)?;
            n.files += 1;
            n.bytes += bytes.len() as u64;
        }
        FileContent::Symlink(target) => {
            // Incus 6.0 reports a relative target resolved (`a` in /d reads `/d/a`): made
            // relative again when it stays in the link's directory.
            let dir = src.rsplit_once('/').map_or("", |(d, _)| d);
            let target = target
                .strip_prefix(&format!("{dir}/"))
                .filter(|rest| !rest.is_empty())
                .unwrap_or(target);
            // The link itself is made (as docker cp does); nothing later writes through it.
            remove_symlink(dest)?;
            std::os::unix::fs::symlink(target, dest)
                .with_context(|| format!("creating symlink {}", dest.display()))?;
            return Ok(());
        }
        FileContent::Directory(entries) => {
            // A symlink where the directory goes (planted by an earlier copy from the same
            // container) is replaced, never descended into.
            remove_symlink(dest)?;
            match std::fs::create_dir(dest) {
                Ok(()) => {}
                Err(e)
                    if e.kind() == std::io::ErrorKind::AlreadyExists
                        && std::fs::symlink_metadata(dest).is_ok_and(|m| m.is_dir()) => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("creating {}", dest.display()));
                }
            }
            n.dirs += 1;
            for e in entries {
                check_entry_name(instance, src, e)?;
                Box::pin(pull(
                    client,
                    instance,
                    &join(src, e),
                    &dest.join(e),
                    archive,
                    n,
                ))
                .await?;
            }
        }
    }
    std::fs::set_permissions(
        dest,
        std::fs::Permissions::from_mode(local_mode(f.mode, archive)),
    )
    .with_context(|| format!("setting the mode of {}", dest.display()))?;
    if archive {
        std::os::unix::fs::lchown(dest, Some(f.uid), Some(f.gid))
            .with_context(|| format!("setting the owner of {}", dest.display()))?;
    }
    Ok(())
}

/// The local mode of a file copied out: setuid and setgid dropped unless `-a` (a container
/// must not hand the host a setuid binary of its choosing).
fn local_mode(mode: u32, archive: bool) -> u32 {
    if archive {
        mode & 0o7777
    } else {
        mode & 0o1777
    }
}

/// An entry name listed by the instance must be one path component: no `/`, `.`, `..` or
/// NUL (the container chooses them).
fn check_entry_name(instance: &str, dir: &str, name: &str) -> anyhow::Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        bail!(
            "{instance}:{dir} lists an entry named {name:?}, which is not a file name; nothing more is copied from it"
        );
    }
    Ok(())
}

/// Removes `path` if it is a symlink (not what it points to).
fn remove_symlink(path: &Path) -> anyhow::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => std::fs::remove_file(path)
            .with_context(|| format!("replacing the symlink {}", path.display())),
        _ => Ok(()),
    }
}

/// Writes a file without following a symlink at `path` (an earlier copy from the same
/// container may have planted one pointing anywhere on the host): the link is replaced.
fn write_no_follow(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    remove_symlink(path)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .mode(0o600)
        .open(path)
        .with_context(|| {
            format!(
                "writing {} (a symlink there is not followed)",
                path.display()
            )
        })?;
    file.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))
}

/// Copies local path `src` to instance path `dest` (whose parent exists).
async fn push(
    client: &Client,
    instance: &str,
    src: &Path,
    dest: &str,
    archive: bool,
    n: &mut Count,
) -> anyhow::Result<()> {
    let meta =
        std::fs::symlink_metadata(src).with_context(|| format!("reading {}", src.display()))?;
    let opts = FileOptions {
        uid: if archive { meta.uid() } else { 0 },
        gid: if archive { meta.gid() } else { 0 },
        mode: meta.mode() & 0o7777,
        append: false,
    };
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target = std::fs::read_link(src)?;
        client
            .create_symlink(instance, dest, &target.to_string_lossy(), &opts)
            .await
            .with_context(|| format!("creating symlink {instance}:{dest}"))?;
    } else if ft.is_dir() {
        let exists = matches!(
            client
                .instance_file(instance, dest)
                .await
                .map(|f| f.content),
            Ok(FileContent::Directory(_))
        );
        if !exists {
            client
                .create_directory(instance, dest, &opts)
                .await
                .with_context(|| format!("creating {instance}:{dest}"))?;
        }
        n.dirs += 1;
        let mut entries: Vec<_> = std::fs::read_dir(src)
            .with_context(|| format!("reading {}", src.display()))?
            .collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            Box::pin(push(
                client,
                instance,
                &e.path(),
                &join(dest, &name),
                archive,
                n,
            ))
            .await?;
        }
        if exists {
            // An existing directory keeps its own mode, as with docker cp.
            return Ok(());
        }
    } else if ft.is_file() {
        let bytes = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
        n.files += 1;
        n.bytes += bytes.len() as u64;
        client
            .push_file(instance, dest, bytes, &opts)
            .await
            .with_context(|| format!("writing {instance}:{dest}"))?;
    } else {
        bail!(
            "{}: only files, directories and symlinks can be copied",
            src.display()
        );
    }
    Ok(())
}

pub fn run(global: &GlobalArgs, args: &CpArgs) -> anyhow::Result<ExitCode> {
    let (from, to) = (split_remote(&args.source), split_remote(&args.dest));
    let (service, inbound) = match (from, to) {
        (Some(_), Some(_)) => bail!("copying between two instances is not supported"),
        (None, None) => bail!("one of SOURCE and DEST must be SERVICE:PATH"),
        (Some((s, _)), None) => (s.to_string(), false),
        (None, Some((s, _))) => (s.to_string(), true),
    };
    let ctx = Context::new(global)?;
    super::select::check_services(&ctx, std::slice::from_ref(&service))?;
    let is_global = ctx.project.services[&service]
        .deploy
        .as_ref()
        .is_some_and(|d| d.mode == DeployMode::Global);
    let client = super::select::client(&ctx);
    block_on(async {
        let instances = super::select::instances(&ctx, &[], false).await?;
        let instance = super::shared::pick_replica(&instances, &service, args.index, is_global)?;
        let name = instance.name.clone();
        let mut n = Count::default();
        if inbound {
            let src = PathBuf::from(&args.source);
            let (_, dest) = split_remote(&args.dest).unwrap_or_default();
            let dest = instance_path(dest);
            if !src.exists() && std::fs::symlink_metadata(&src).is_err() {
                bail!("{}: no such file or directory", src.display());
            }
            let into_dir = matches!(
                client.instance_file(&name, &dest).await.map(|f| f.content),
                Ok(FileContent::Directory(_))
            );
            match (into_dir, base_name(&args.source)) {
                (true, Some(base)) => {
                    push(
                        &client,
                        &name,
                        &src,
                        &join(&dest, &base),
                        args.archive,
                        &mut n,
                    )
                    .await?
                }
                // `SRC/.` (its contents) or DEST is new.
                _ => push(&client, &name, &src, &dest, args.archive, &mut n).await?,
            }
            eprintln!(
                "Copied {} to {name}:{dest} ({} file(s), {} dir(s), {} bytes)",
                args.source, n.files, n.dirs, n.bytes
            );
        } else {
            let (_, src) = split_remote(&args.source).unwrap_or_default();
            let src_path = instance_path(src);
            let dest = PathBuf::from(&args.dest);
            let target = match (dest.is_dir(), base_name(src)) {
                (true, Some(base)) => dest.join(base),
                _ => dest.clone(),
            };
            pull(&client, &name, &src_path, &target, args.archive, &mut n).await?;
            eprintln!(
                "Copied {name}:{src_path} to {} ({} file(s), {} dir(s), {} bytes)",
                target.display(),
                n.files,
                n.dirs,
                n.bytes
            );
        }
        Ok(ExitCode::SUCCESS)
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_paths_are_told_from_local_paths() {
        assert_eq!(split_remote("web:/etc/x"), Some(("web", "/etc/x")));
        assert_eq!(split_remote("./web:x"), None);
        assert_eq!(split_remote("/tmp/a:b"), None);
        assert_eq!(split_remote("dir/a:b"), None);
        assert_eq!(split_remote("plain"), None);
    }

    #[test]
    fn entry_names_from_the_instance_are_single_components_and_setuid_is_dropped() {
        assert!(check_entry_name("web-1", "/d", "a.txt").is_ok());
        for bad in ["..", ".", "", "a/b", "../../etc/passwd", "a\0b"] {
            assert!(check_entry_name("web-1", "/d", bad).is_err(), "{bad:?}");
        }
        assert_eq!(local_mode(0o4755, false), 0o755);
        assert_eq!(local_mode(0o2755, false), 0o755);
        assert_eq!(local_mode(0o1777, false), 0o1777);
        assert_eq!(local_mode(0o4755, true), 0o4755);
    }

    #[test]
    fn a_file_is_written_in_place_of_a_symlink_not_through_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep").expect("write");
        let link = dir.path().join("x");
        std::os::unix::fs::symlink(&victim, &link).expect("symlink");
        write_no_follow(&link, b"evil").expect("written");
        assert_eq!(std::fs::read_to_string(&victim).expect("read"), "keep");
        assert_eq!(std::fs::read_to_string(&link).expect("read"), "evil");
        assert!(
            !std::fs::symlink_metadata(&link)
                .expect("meta")
                .file_type()
                .is_symlink()
        );
        let sub = dir.path().join("d");
        std::os::unix::fs::symlink(dir.path(), &sub).expect("symlink");
        remove_symlink(&sub).expect("removed");
        assert!(std::fs::symlink_metadata(&sub).is_err());
    }

    #[test]
    fn base_name_is_none_for_the_contents_of_a_directory() {
        assert_eq!(base_name("/a/b/").as_deref(), Some("b"));
        assert_eq!(base_name("a/b/."), None);
        assert_eq!(base_name("file").as_deref(), Some("file"));
        assert_eq!(instance_path("etc/x/"), "/etc/x");
        assert_eq!(instance_path("/"), "/");
    }
}
