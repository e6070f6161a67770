//! Finding the server the way the `incus` CLI does: its configuration directory
//! (`INCUS_CONF` or `~/.config/incus`), its `config.yml` (remotes, default remote), its client
//! certificate and the pinned server certificates, and the local unix socket
//! (`INCUS_SOCKET`, `$INCUS_DIR/unix.socket`, `/var/lib/incus/unix.socket`, `/run/incus/unix.socket`).
//!
//! Every lookup takes an [`Env`] so tests can inject variables and file existence.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// Where environment variables and file existence come from (the real process, or a test).
pub trait Env {
    /// The value of an environment variable, `None` when unset or empty.
    fn var(&self, name: &str) -> Option<String>;
    /// Whether a path exists.
    fn exists(&self, path: &Path) -> bool;
}

/// The real process environment and filesystem.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
}

/// The well-known socket locations tried when neither `INCUS_SOCKET` nor `INCUS_DIR` is set.
pub const DEFAULT_SOCKETS: [&str; 2] = ["/var/lib/incus/unix.socket", "/run/incus/unix.socket"];

/// Where the local unix socket is, and how it was chosen (for error messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketChoice {
    /// The socket path.
    pub path: PathBuf,
    /// Why this one: `INCUS_SOCKET`, `INCUS_DIR`, or `default location`.
    pub reason: &'static str,
}

/// Find the local socket like the incus CLI: `INCUS_SOCKET`, then `$INCUS_DIR/unix.socket`,
/// then the first existing default location (`/var/lib/incus/unix.socket`,
/// `/run/incus/unix.socket`); if none exists, the first default (so the error names it).
/// An explicit variable is never second-guessed.
pub fn local_socket(env: &dyn Env) -> SocketChoice {
    if let Some(p) = env.var("INCUS_SOCKET") {
        return SocketChoice {
            path: PathBuf::from(p),
            reason: "INCUS_SOCKET",
        };
    }
    if let Some(dir) = env.var("INCUS_DIR") {
        return SocketChoice {
            path: Path::new(&dir).join("unix.socket"),
            reason: "INCUS_DIR",
        };
    }
    let path = DEFAULT_SOCKETS
        .iter()
        .map(PathBuf::from)
        .find(|p| env.exists(p))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKETS[0]));
    SocketChoice {
        path,
        reason: "default location",
    }
}

/// The incus CLI configuration directory: `INCUS_CONF`, else `$HOME/.config/incus`.
pub fn config_dir(env: &dyn Env) -> Option<PathBuf> {
    if let Some(d) = env.var("INCUS_CONF") {
        return Some(PathBuf::from(d));
    }
    env.var("HOME")
        .map(|h| Path::new(&h).join(".config").join("incus"))
}

/// One remote of the incus CLI configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Remote {
    /// Address: `unix://` (local default socket), `unix:///path/to.socket`, or `https://host:port`.
    pub addr: String,
    /// `incus` (the API), `simplestreams` or `oci` (image servers only).
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// Whether the remote is public (no authentication).
    #[serde(default)]
    pub public: bool,
    /// Authentication type (`tls`, `oidc`).
    #[serde(default)]
    pub auth_type: String,
    /// The project this remote uses by default (empty: `default`).
    #[serde(default)]
    pub project: String,
}

fn default_protocol() -> String {
    "incus".to_string()
}

/// The parts of the incus CLI's `config.yml` this tool uses.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CliConfig {
    /// The remote used when none is named.
    #[serde(rename = "default-remote", default = "default_remote_name")]
    pub default_remote: String,
    /// Remotes by name.
    #[serde(default)]
    pub remotes: BTreeMap<String, Remote>,
}

fn default_remote_name() -> String {
    "local".to_string()
}

impl Default for CliConfig {
    /// What the incus CLI uses without a configuration file: the `local` remote.
    fn default() -> Self {
        let mut remotes = BTreeMap::new();
        remotes.insert("local".to_string(), local_remote());
        CliConfig {
            default_remote: default_remote_name(),
            remotes,
        }
    }
}

fn local_remote() -> Remote {
    Remote {
        addr: "unix://".into(),
        protocol: default_protocol(),
        public: false,
        auth_type: "file access".into(),
        project: String::new(),
    }
}

impl CliConfig {
    /// Parse `config.yml` text. The `local` remote is always known (the CLI adds it too).
    pub fn parse(text: &str, path: &Path) -> Result<CliConfig> {
        let mut cfg: CliConfig = if text.trim().is_empty() {
            CliConfig::default()
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| Error::Config {
                path: path.to_path_buf(),
                message: format!("not valid incus CLI configuration: {e}"),
            })?
        };
        cfg.remotes
            .entry("local".to_string())
            .or_insert_with(local_remote);
        Ok(cfg)
    }

    /// Resolve a remote by name (`None`: the default remote).
    pub fn remote(&self, name: Option<&str>, config_path: &Path) -> Result<(String, Remote)> {
        let name = name.unwrap_or(&self.default_remote);
        match self.remotes.get(name) {
            Some(r) => Ok((name.to_string(), r.clone())),
            None => Err(Error::UnknownRemote {
                name: name.to_string(),
                config: config_path.display().to_string(),
                known: self.remotes.keys().cloned().collect::<Vec<_>>().join(", "),
            }),
        }
    }
}

/// The incus CLI configuration as found on disk, with where it came from.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The configuration directory (`INCUS_CONF` or `~/.config/incus`), if one could be named.
    pub dir: Option<PathBuf>,
    /// The parsed configuration (the default one if no file exists).
    pub config: CliConfig,
}

impl LoadedConfig {
    /// Read `config.yml` from the CLI configuration directory; a missing file gives the
    /// default configuration (remote `local`), as with the CLI.
    pub fn load(env: &dyn Env) -> Result<LoadedConfig> {
        let dir = config_dir(env);
        let Some(d) = &dir else {
            return Ok(LoadedConfig {
                dir,
                config: CliConfig::default(),
            });
        };
        let file = d.join("config.yml");
        let config = match std::fs::read_to_string(&file) {
            Ok(text) => CliConfig::parse(&text, &file)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => CliConfig::default(),
            Err(e) => {
                return Err(Error::Config {
                    path: file,
                    message: format!("cannot read: {e}"),
                });
            }
        };
        Ok(LoadedConfig { dir, config })
    }

    /// Path of `config.yml` (for messages).
    pub fn file(&self) -> PathBuf {
        self.dir
            .as_ref()
            .map(|d| d.join("config.yml"))
            .unwrap_or_else(|| PathBuf::from("(no HOME or INCUS_CONF: built-in defaults)"))
    }

    /// The client certificate and key (`client.crt`, `client.key`) if both exist.
    pub fn client_cert(&self) -> Option<(PathBuf, PathBuf)> {
        let d = self.dir.as_ref()?;
        let (crt, key) = (d.join("client.crt"), d.join("client.key"));
        (crt.exists() && key.exists()).then_some((crt, key))
    }

    /// The pinned server certificate of a remote (`servercerts/<remote>.crt`) if it exists.
    pub fn server_cert(&self, remote: &str) -> Option<PathBuf> {
        let p = self
            .dir
            .as_ref()?
            .join("servercerts")
            .join(format!("{remote}.crt"));
        p.exists().then_some(p)
    }
}

/// Where a remote's address points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A unix socket; `None` means the default local socket.
    Unix(Option<PathBuf>),
    /// An HTTPS endpoint.
    Https {
        /// Host name or IP address (IPv6 without brackets).
        host: String,
        /// TCP port (default 8443).
        port: u16,
    },
}

/// Parse a remote address (`unix://`, `unix:///path`, `https://host[:port]`).
pub fn parse_address(addr: &str) -> Result<Address> {
    let bad = |message: String| Error::InvalidInput {
        what: format!("remote address {addr:?}"),
        message,
    };
    if let Some(rest) = addr.strip_prefix("unix://") {
        return Ok(Address::Unix(if rest.is_empty() {
            None
        } else {
            Some(PathBuf::from(rest))
        }));
    }
    let Some(rest) = addr.strip_prefix("https://") else {
        return Err(bad(
            "expected unix://, unix:///path or https://host:port".into()
        ));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("unclosed [ in IPv6 address".into()))?;
        (h.to_string(), after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host".into()));
    }
    let port = match port {
        None | Some("") => 8443,
        Some(p) => p
            .parse()
            .map_err(|_| bad(format!("port {p:?} is not a number")))?,
    };
    Ok(Address::Https { host, port })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    #[derive(Default)]
    struct FakeEnv {
        vars: HashMap<String, String>,
        files: HashSet<PathBuf>,
    }
    impl Env for FakeEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.vars.get(name).cloned().filter(|v| !v.is_empty())
        }
        fn exists(&self, path: &Path) -> bool {
            self.files.contains(path)
        }
    }
    fn env(vars: &[(&str, &str)], files: &[&str]) -> FakeEnv {
        FakeEnv {
            vars: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            files: files.iter().map(PathBuf::from).collect(),
        }
    }

    #[test]
    fn incus_socket_variable_wins_over_everything() {
        let e = env(
            &[("INCUS_SOCKET", "/tmp/s.sock"), ("INCUS_DIR", "/srv/incus")],
            &["/var/lib/incus/unix.socket"],
        );
        let c = local_socket(&e);
        assert_eq!(c.path, PathBuf::from("/tmp/s.sock"));
        assert_eq!(c.reason, "INCUS_SOCKET");
    }

    #[test]
    fn incus_dir_is_used_when_no_socket_variable() {
        let e = env(
            &[("INCUS_DIR", "/srv/incus")],
            &["/var/lib/incus/unix.socket"],
        );
        assert_eq!(
            local_socket(&e).path,
            PathBuf::from("/srv/incus/unix.socket")
        );
    }

    #[test]
    fn empty_variables_count_as_unset() {
        let e = env(&[("INCUS_SOCKET", ""), ("INCUS_DIR", "")], &[]);
        assert_eq!(
            local_socket(&e).path,
            PathBuf::from("/var/lib/incus/unix.socket")
        );
    }

    #[test]
    fn default_locations_are_tried_in_order() {
        let e = env(&[], &["/run/incus/unix.socket"]);
        assert_eq!(
            local_socket(&e).path,
            PathBuf::from("/run/incus/unix.socket")
        );
        let e = env(
            &[],
            &["/run/incus/unix.socket", "/var/lib/incus/unix.socket"],
        );
        assert_eq!(
            local_socket(&e).path,
            PathBuf::from("/var/lib/incus/unix.socket")
        );
        let e = env(&[], &[]);
        let c = local_socket(&e);
        assert_eq!(c.path, PathBuf::from("/var/lib/incus/unix.socket"));
        assert_eq!(c.reason, "default location");
    }

    #[test]
    fn config_dir_prefers_incus_conf_then_home() {
        assert_eq!(
            config_dir(&env(&[("INCUS_CONF", "/c"), ("HOME", "/h")], &[])),
            Some(PathBuf::from("/c"))
        );
        assert_eq!(
            config_dir(&env(&[("HOME", "/h")], &[])),
            Some(PathBuf::from("/h/.config/incus"))
        );
        assert_eq!(config_dir(&env(&[], &[])), None);
    }

    const SAMPLE: &str = r#"
default-remote: prod
remotes:
  images:
    addr: https://images.linuxcontainers.org
    protocol: simplestreams
    public: true
  local:
    addr: unix://
    public: false
  prod:
    addr: https://10.0.0.5:8443
    auth_type: tls
    project: shop
    protocol: incus
    public: false
aliases: {}
"#;

    #[test]
    fn config_yml_gives_default_remote_and_remotes() {
        let p = Path::new("/x/config.yml");
        let cfg = CliConfig::parse(SAMPLE, p).unwrap();
        assert_eq!(cfg.default_remote, "prod");
        let (name, r) = cfg.remote(None, p).unwrap();
        assert_eq!(name, "prod");
        assert_eq!(r.addr, "https://10.0.0.5:8443");
        assert_eq!(r.project, "shop");
        assert_eq!(r.protocol, "incus");
        let (_, images) = cfg.remote(Some("images"), p).unwrap();
        assert_eq!(images.protocol, "simplestreams");
        assert!(images.public);
        let (_, local) = cfg.remote(Some("local"), p).unwrap();
        assert_eq!(parse_address(&local.addr).unwrap(), Address::Unix(None));
    }

    #[test]
    fn unknown_remote_error_lists_known_ones() {
        let p = Path::new("/x/config.yml");
        let cfg = CliConfig::parse(SAMPLE, p).unwrap();
        let err = cfg.remote(Some("nope"), p).unwrap_err().to_string();
        assert!(err.contains("\"nope\""), "{err}");
        assert!(err.contains("images, local, prod"), "{err}");
        assert!(err.contains("/x/config.yml"), "{err}");
    }

    #[test]
    fn config_without_default_remote_or_local_still_has_local() {
        let p = Path::new("/x/config.yml");
        let cfg = CliConfig::parse("remotes:\n  a:\n    addr: https://a\n", p).unwrap();
        assert_eq!(cfg.default_remote, "local");
        assert!(cfg.remotes.contains_key("local"));
        assert_eq!(cfg.remotes["a"].protocol, "incus");
        assert_eq!(CliConfig::parse("", p).unwrap(), CliConfig::default());
    }

    #[test]
    fn broken_config_yml_is_an_error_naming_the_file() {
        let p = Path::new("/x/config.yml");
        let err = CliConfig::parse("remotes: [1, 2", p)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/x/config.yml"), "{err}");
    }

    #[test]
    fn addresses_parse() {
        assert_eq!(
            parse_address("unix:///srv/s.sock").unwrap(),
            Address::Unix(Some(PathBuf::from("/srv/s.sock")))
        );
        assert_eq!(
            parse_address("https://100.64.1.11:8443").unwrap(),
            Address::Https {
                host: "100.64.1.11".into(),
                port: 8443
            }
        );
        assert_eq!(
            parse_address("https://incus.example").unwrap(),
            Address::Https {
                host: "incus.example".into(),
                port: 8443
            }
        );
        assert_eq!(
            parse_address("https://[fd00::1]:9000/").unwrap(),
            Address::Https {
                host: "fd00::1".into(),
                port: 9000
            }
        );
        assert!(parse_address("http://x").is_err());
        assert!(parse_address("https://x:port").is_err());
    }
}
