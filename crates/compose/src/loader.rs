//! The loading pipeline: discover files, read `.env`, then for each file parse -> interpolate ->
//! validate -> include -> canonicalise -> extends; merge the files; normalise into the typed
//! model with compose-go's semantic checks. File-system and environment access go through
//! [`FileSystem`] and [`LoadOptions::environment`], so everything is testable in memory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::canonical::{Ctx, canonicalize_file, clean};
use crate::env::{Environment, parse_dotenv};
use crate::error::{Diagnostic, Errors, LoadErrors};
use crate::interpolate::interpolate_tree;
use crate::merge::{merge_files, merge_service, strip};
use crate::model::Project;
use crate::schema::validate_file;
use crate::yaml::{Entry, Node, Value};

/// Where compose files and env files are read from.
pub trait FileSystem {
    fn read_to_string(&self, path: &Path) -> std::io::Result<String>;
    fn is_file(&self, path: &Path) -> bool;
    /// The bytes of a file (secret and config `file:` sources may be binary).
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        self.read_to_string(path).map(String::into_bytes)
    }
}

/// The real file system.
pub struct RealFs;

impl FileSystem for RealFs {
    fn read_to_string(&self, path: &Path) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }
    fn is_file(&self, path: &Path) -> bool {
        path.is_file()
    }
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        std::fs::read(path)
    }
}

/// An in-memory file system (tests, fuzzing).
#[derive(Debug, Default, Clone)]
pub struct MemFs {
    pub files: BTreeMap<PathBuf, String>,
}

impl MemFs {
    pub fn with(mut self, path: impl Into<PathBuf>, text: impl Into<String>) -> MemFs {
        self.files.insert(path.into(), text.into());
        self
    }
}

impl FileSystem for MemFs {
    fn read_to_string(&self, path: &Path) -> std::io::Result<String> {
        self.files
            .get(path)
            .cloned()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"))
    }
    fn is_file(&self, path: &Path) -> bool {
        self.files.contains_key(path)
    }
}

/// What to load, as the CLI flags and environment say.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `-f` files, in order; `-` is standard input (its text in `stdin`). Empty: discover.
    pub files: Vec<PathBuf>,
    /// The text of standard input, when a file is `-`.
    pub stdin: Option<String>,
    /// The current directory (discovery starts here; relative `-f` paths resolve here).
    pub working_dir: PathBuf,
    /// `--project-directory`.
    pub project_directory: Option<PathBuf>,
    /// `-p`.
    pub project_name: Option<String>,
    /// `--env-file` (default `.env` in the project directory).
    pub env_files: Vec<PathBuf>,
    /// `--profile` (COMPOSE_PROFILES is read from the environment too).
    pub profiles: Vec<String>,
    /// The process environment.
    pub environment: BTreeMap<String, String>,
    /// false = `--no-interpolate`.
    pub interpolate: bool,
}

impl LoadOptions {
    /// Options for the current process: its directory and environment, interpolation on.
    pub fn from_process() -> LoadOptions {
        LoadOptions {
            working_dir: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
            environment: std::env::vars().collect(),
            interpolate: true,
            ..LoadOptions::default()
        }
    }
}

const DEFAULT_FILES: &[&str] = &[
    "compose.yaml",
    "compose.yml",
    "docker-compose.yaml",
    "docker-compose.yml",
];
const OVERRIDE_FILES: &[&str] = &[
    "compose.override.yaml",
    "compose.override.yml",
    "docker-compose.override.yaml",
    "docker-compose.override.yml",
];

fn absolute(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        clean(p)
    } else {
        clean(&base.join(p))
    }
}

/// Find the compose files: `compose.yaml` & co. in `dir` or its parents, plus the override
/// file beside it.
pub fn discover(dir: &Path, fs: &dyn FileSystem) -> Option<Vec<PathBuf>> {
    let mut cur = Some(dir);
    while let Some(d) = cur {
        if let Some(main) = DEFAULT_FILES
            .iter()
            .map(|f| d.join(f))
            .find(|p| fs.is_file(p))
        {
            let mut files = vec![main];
            if let Some(o) = OVERRIDE_FILES
                .iter()
                .map(|f| d.join(f))
                .find(|p| fs.is_file(p))
            {
                files.push(o);
            }
            return Some(files);
        }
        cur = d.parent();
    }
    None
}

/// Compose's project name normalisation: lower case, only `a-z0-9_-`, starting with a letter
/// or digit.
pub fn normalize_project_name(name: &str) -> String {
    let lower = name.to_lowercase();
    let kept: String = lower
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-')
        .collect();
    kept.trim_start_matches(['_', '-']).to_string()
}

fn valid_project_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

pub(crate) struct Loader<'a> {
    pub fs: &'a dyn FileSystem,
    pub interpolate: bool,
    pub home: Option<String>,
    pub errors: Errors,
    pub warnings: Vec<Diagnostic>,
    /// Files being included, to refuse include cycles.
    include_stack: Vec<PathBuf>,
}

fn read_env_files(
    fs: &dyn FileSystem,
    files: &[PathBuf],
    required: bool,
    process: &BTreeMap<String, String>,
    errors: &mut Errors,
) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for f in files {
        match fs.read_to_string(f) {
            Ok(text) => {
                let snapshot = out.clone();
                let outer = |k: &str| process.get(k).or_else(|| snapshot.get(k)).cloned();
                match parse_dotenv(&text, &outer) {
                    Ok(vars) => out.extend(vars),
                    Err(e) => errors.push(Diagnostic {
                        file: Arc::from(f.to_string_lossy().as_ref()),
                        line: e.line,
                        col: 1,
                        path: String::new(),
                        message: e.message,
                        hint: None,
                    }),
                }
            }
            Err(e) => {
                if required {
                    errors.push(Diagnostic::general(format!(
                        "cannot read env file {}: {e}",
                        f.display()
                    )));
                }
            }
        }
    }
    out
}

impl<'a> Loader<'a> {
    /// Parse, interpolate, validate, include, canonicalise and resolve extends for one file.
    fn load_file(
        &mut self,
        display: &str,
        text: &str,
        base_dir: &Path,
        file_dir: &Path,
        env: &Environment,
        extends_stack: &mut Vec<(String, String)>,
    ) -> Option<Node> {
        let file: Arc<str> = Arc::from(display);
        let documents = match crate::yaml::parse_documents(text, &file) {
            Ok(r) => r,
            Err(list) => {
                for d in list {
                    self.errors.push(d);
                }
                return None;
            }
        };
        // Several `---` documents load as that many files, merged in order (as compose-go).
        let mut merged: Option<Node> = None;
        let several = documents.len() > 1;
        for root in documents {
            if several && root.is_null() {
                // compose-go: every document must be a mapping (a final `---` too).
                self.errors.push(
                    Diagnostic::new(root.span.clone(), "", "an empty YAML document")
                        .with_hint("remove the `---` that starts it, or give it content"),
                );
                return None;
            }
            let root = self.load_document(root, base_dir, file_dir, env, display, extends_stack);
            merged = Some(match merged {
                None => root,
                Some(m) => merge_files(m, root),
            });
        }
        merged
    }

    /// One document of a file: interpolate, validate, include, canonicalise, resolve extends.
    fn load_document(
        &mut self,
        mut root: Node,
        base_dir: &Path,
        file_dir: &Path,
        env: &Environment,
        display: &str,
        extends_stack: &mut Vec<(String, String)>,
    ) -> Node {
        if root.is_null() {
            root = Node::new(Value::Map(Default::default()), root.span.clone());
        }
        if self.interpolate {
            let lookup = |k: &str| env.get(k);
            interpolate_tree(&mut root, &lookup, &mut self.errors, &mut self.warnings);
        }
        // Structural errors do not stop the pipeline: later stages are defensive, and
        // reporting their findings too gives every error of the file in one run.
        validate_file(&root, &mut self.errors);
        if let Some(v) = root.get("version") {
            self.warnings.push(Diagnostic::new(
                v.span.clone(),
                "version",
                "the top-level `version` is obsolete and ignored",
            ));
        }
        let ctx = Ctx {
            base_dir,
            home: self.home.as_deref(),
        };
        canonicalize_file(&mut root, &ctx, &mut self.errors);
        // Includes first (as compose-go does), so a service may extend an included one.
        if let Some(inc) = root.as_map_mut().and_then(|m| m.shift_remove("include")) {
            self.apply_includes(&mut root, inc.node, file_dir, env);
        }
        self.resolve_extends(&mut root, display, file_dir, env, extends_stack);
        root
    }

    fn resolve_extends(
        &mut self,
        root: &mut Node,
        display: &str,
        file_dir: &Path,
        env: &Environment,
        stack: &mut Vec<(String, String)>,
    ) {
        let Some(names) = root
            .get("services")
            .and_then(Node::as_map)
            .map(|m| m.keys().cloned().collect::<Vec<_>>())
        else {
            return;
        };
        for name in names {
            let resolved = self.resolve_service(root, &name, display, file_dir, env, stack);
            if let (Some(node), Some(services)) = (
                resolved,
                root.as_map_mut()
                    .and_then(|m| m.get_mut("services"))
                    .and_then(|e| e.node.as_map_mut()),
            ) {
                if let Some(e) = services.get_mut(&name) {
                    e.node = node;
                }
            }
        }
    }

    /// The service `name` of `root` with its `extends` chain applied.
    #[allow(clippy::too_many_arguments)]
    fn resolve_service(
        &mut self,
        root: &Node,
        name: &str,
        display: &str,
        file_dir: &Path,
        env: &Environment,
        stack: &mut Vec<(String, String)>,
    ) -> Option<Node> {
        let svc = root.get("services")?.get(name)?.clone();
        let Some(ext) = svc.get("extends").cloned() else {
            return Some(svc);
        };
        let key = (display.to_string(), name.to_string());
        if stack.contains(&key) {
            let chain: Vec<String> = stack.iter().map(|(_, s)| s.clone()).collect();
            self.errors.push(Diagnostic::new(
                ext.span.clone(),
                format!("services.{name}.extends"),
                format!("extends cycle: {} -> {name}", chain.join(" -> ")),
            ));
            return None;
        }
        let (target, file) = match &ext.value {
            Value::Str(s) => (s.clone(), None),
            _ => (
                ext.get("service")
                    .and_then(Node::as_str)
                    .unwrap_or_default()
                    .to_string(),
                ext.get("file").and_then(Node::as_str).map(str::to_string),
            ),
        };
        stack.push(key);
        let base = match file {
            None => {
                if root.get("services").and_then(|s| s.get(&target)).is_none() {
                    self.errors.push(Diagnostic::new(
                        ext.span.clone(),
                        format!("services.{name}.extends"),
                        format!("cannot extend service {target:?}: it is not defined in this file"),
                    ));
                    None
                } else {
                    self.resolve_service(root, &target, display, file_dir, env, stack)
                }
            }
            Some(f) => {
                let path = absolute(file_dir, Path::new(&f));
                match self.fs.read_to_string(&path) {
                    Err(e) => {
                        self.errors.push(Diagnostic::new(
                            ext.span.clone(),
                            format!("services.{name}.extends.file"),
                            format!("cannot read {}: {e}", path.display()),
                        ));
                        None
                    }
                    Ok(text) => {
                        let other_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
                        let other_display = path.to_string_lossy().into_owned();
                        let other = self.load_file(
                            &other_display,
                            &text,
                            &other_dir,
                            &other_dir,
                            env,
                            stack,
                        );
                        match other {
                            None => None,
                            Some(o) => match o.get("services").and_then(|s| s.get(&target)) {
                                Some(s) => Some(s.clone()),
                                None => {
                                    self.errors.push(Diagnostic::new(
                                        ext.span.clone(),
                                        format!("services.{name}.extends"),
                                        format!("cannot extend service {target:?}: {} does not define it", path.display()),
                                    ));
                                    None
                                }
                            },
                        }
                    }
                }
            }
        };
        stack.pop();
        let base = base?;
        let mut own = svc;
        if let Some(m) = own.as_map_mut() {
            m.shift_remove("extends");
        }
        let mut base = base;
        if let Some(m) = base.as_map_mut() {
            m.shift_remove("extends");
        }
        merge_service(base, own)
    }

    fn apply_includes(
        &mut self,
        root: &mut Node,
        inc: Node,
        file_dir: &Path,
        parent_env: &Environment,
    ) {
        let Some(items) = inc.as_seq() else { return };
        for item in items {
            let (paths, env_files, project_dir): (Vec<String>, Vec<String>, Option<String>) =
                match &item.value {
                    Value::Str(s) => (vec![s.clone()], vec![], None),
                    _ => {
                        let list = |k: &str| -> Vec<String> {
                            match item.get(k) {
                                Some(n) => match &n.value {
                                    Value::Str(s) => vec![s.clone()],
                                    Value::Seq(v) => {
                                        v.iter().filter_map(Node::scalar_text).collect()
                                    }
                                    _ => vec![],
                                },
                                None => vec![],
                            }
                        };
                        (
                            list("path"),
                            list("env_file"),
                            item.get("project_directory")
                                .and_then(Node::as_str)
                                .map(str::to_string),
                        )
                    }
                };
            if paths.is_empty() {
                self.errors
                    .at(&item.span, "include", "an include needs a path");
                continue;
            }
            let files: Vec<PathBuf> = paths
                .iter()
                .map(|p| absolute(file_dir, Path::new(p)))
                .collect();
            if let Some(f) = files.iter().find(|f| self.include_stack.contains(f)) {
                self.errors.at(
                    &item.span,
                    "include",
                    format!("include cycle through {}", f.display()),
                );
                continue;
            }
            let pdir = match &project_dir {
                Some(d) => absolute(file_dir, Path::new(d)),
                None => files[0].parent().map(Path::to_path_buf).unwrap_or_default(),
            };
            let (env_paths, required) = if env_files.is_empty() {
                (vec![pdir.join(".env")], false)
            } else {
                (
                    env_files
                        .iter()
                        .map(|e| absolute(file_dir, Path::new(e)))
                        .collect(),
                    true,
                )
            };
            let dotenv = read_env_files(
                self.fs,
                &env_paths,
                required,
                &parent_env.process,
                &mut self.errors,
            );
            let env = Environment {
                process: parent_env.process.clone(),
                dotenv,
            };
            self.include_stack.extend(files.iter().cloned());
            let mut merged: Option<Node> = None;
            for f in &files {
                match self.fs.read_to_string(f) {
                    Err(e) => self.errors.push(Diagnostic::new(
                        item.span.clone(),
                        "include",
                        format!("cannot read {}: {e}", f.display()),
                    )),
                    Ok(text) => {
                        let display = f.to_string_lossy().into_owned();
                        let fdir = f.parent().map(Path::to_path_buf).unwrap_or_default();
                        if let Some(t) =
                            self.load_file(&display, &text, &pdir, &fdir, &env, &mut Vec::new())
                        {
                            merged = Some(match merged {
                                None => t,
                                Some(m) => merge_files(m, t),
                            });
                        }
                    }
                }
            }
            for _ in &files {
                self.include_stack.pop();
            }
            let Some(included) = merged else { continue };
            let (Some(dst), Some(src)) = (root.as_map_mut(), included.as_map()) else {
                continue;
            };
            for section in [
                "services", "networks", "volumes", "secrets", "configs", "models",
            ] {
                let Some(src_items) = src.get(section).and_then(|e| e.node.as_map()) else {
                    continue;
                };
                let entry = dst.entry(section.to_string()).or_insert_with(|| Entry {
                    key_span: item.span.clone(),
                    node: Node::new(Value::Map(Default::default()), item.span.clone()),
                });
                if entry.node.is_null() {
                    entry.node.value = Value::Map(Default::default());
                }
                let Some(dst_items) = entry.node.as_map_mut() else {
                    continue;
                };
                for (name, e) in src_items {
                    match dst_items.get(name) {
                        Some(existing) if strip(existing.node.clone()) != strip(e.node.clone()) => {
                            self.errors.push(Diagnostic::new(
                                existing.key_span.clone(),
                                format!("{section}.{name}"),
                                format!(
                                    "conflicts with {section}.{name} imported by include from {}",
                                    e.node.span.file
                                ),
                            ));
                        }
                        Some(_) => {}
                        None => {
                            dst_items.insert(name.clone(), e.clone());
                        }
                    }
                }
            }
        }
    }
}

/// Load a project.
pub fn load_with(options: &LoadOptions, fs: &dyn FileSystem) -> Result<Project, LoadErrors> {
    let cwd = clean(&options.working_dir);
    let process = &options.environment;
    let mut errors = Errors::default();

    // .env first: it may set COMPOSE_FILE, COMPOSE_PROFILES, COMPOSE_PROJECT_NAME.
    let guess_dir = options
        .project_directory
        .as_ref()
        .map(|d| absolute(&cwd, d))
        .unwrap_or_else(|| cwd.clone());
    let explicit_env: Vec<PathBuf> = options
        .env_files
        .iter()
        .map(|p| absolute(&cwd, p))
        .collect();
    let mut dotenv = if explicit_env.is_empty() {
        read_env_files(fs, &[guess_dir.join(".env")], false, process, &mut errors)
    } else {
        read_env_files(fs, &explicit_env, true, process, &mut errors)
    };
    let env_get = |k: &str, dotenv: &BTreeMap<String, String>| {
        process.get(k).or_else(|| dotenv.get(k)).cloned()
    };

    // Which files.
    let mut files: Vec<PathBuf> = options.files.clone();
    if files.is_empty() {
        if let Some(cf) = env_get("COMPOSE_FILE", &dotenv).filter(|s| !s.is_empty()) {
            let sep = env_get("COMPOSE_PATH_SEPARATOR", &dotenv).unwrap_or_else(|| ":".into());
            files = cf
                .split(sep.as_str())
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
                .collect();
        }
    }
    let files: Vec<PathBuf> = if files.is_empty() {
        match discover(&guess_dir, fs) {
            Some(f) => f,
            None => {
                return Err(LoadErrors::single(
                    Diagnostic::general(format!(
                        "no compose file found in {} or its parents",
                        guess_dir.display()
                    ))
                    .with_hint("create compose.yaml, or name files with -f"),
                ));
            }
        }
    } else {
        files
            .iter()
            .map(|f| {
                if f.as_os_str() == "-" {
                    f.clone()
                } else {
                    absolute(&cwd, f)
                }
            })
            .collect()
    };
    let project_dir = match &options.project_directory {
        Some(d) => absolute(&cwd, d),
        None => match files.first() {
            Some(f) if f.as_os_str() != "-" => {
                f.parent().map(Path::to_path_buf).unwrap_or(cwd.clone())
            }
            _ => cwd.clone(),
        },
    };
    if explicit_env.is_empty() && project_dir != guess_dir {
        dotenv = read_env_files(fs, &[project_dir.join(".env")], false, process, &mut errors);
    }
    let env = Environment {
        process: process.clone(),
        dotenv,
    };

    let mut loader = Loader {
        fs,
        interpolate: options.interpolate,
        home: env.get("HOME"),
        errors,
        warnings: Vec::new(),
        include_stack: files.clone(),
    };
    let mut merged: Option<Node> = None;
    let mut displays = Vec::new();
    let mut loaded = 0usize;
    for f in &files {
        let (display, text) = if f.as_os_str() == "-" {
            ("-".to_string(), options.stdin.clone().unwrap_or_default())
        } else {
            let display = f.to_string_lossy().into_owned();
            match fs.read_to_string(f) {
                Ok(t) => (display, t),
                Err(e) => {
                    loader
                        .errors
                        .push(Diagnostic::general(format!("cannot read {display}: {e}")));
                    continue;
                }
            }
        };
        displays.push(display.clone());
        let file_dir = if f.as_os_str() == "-" {
            cwd.clone()
        } else {
            f.parent().map(Path::to_path_buf).unwrap_or(cwd.clone())
        };
        if let Some(tree) = loader.load_file(
            &display,
            &text,
            &project_dir,
            &file_dir,
            &env,
            &mut Vec::new(),
        ) {
            loaded += 1;
            merged = Some(match merged {
                None => tree,
                Some(m) => merge_files(m, tree),
            });
        }
    }
    // Go on to normalisation (and its checks) only when every file parsed; otherwise its
    // findings would be noise from the missing file.
    let Some(tree) = merged.filter(|_| loaded == files.len()) else {
        return Err(loader.errors.into_result(()).err().unwrap_or_else(|| {
            LoadErrors::single(Diagnostic::general("no compose file could be loaded"))
        }));
    };
    let tree = strip(tree);

    // Project name: -p, COMPOSE_PROJECT_NAME, top-level name, directory name.
    let (raw_name, from_user) = if let Some(n) = &options.project_name {
        (n.clone(), true)
    } else if let Some(n) = env.get("COMPOSE_PROJECT_NAME").filter(|s| !s.is_empty()) {
        (n, true)
    } else if let Some(n) = tree
        .get("name")
        .and_then(Node::as_str)
        .filter(|s| !s.is_empty())
    {
        (n.to_string(), true)
    } else {
        (
            project_dir
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            false,
        )
    };
    let name = if from_user {
        if !valid_project_name(&raw_name) {
            let span = tree.get("name").map(|n| n.span.clone());
            let msg = format!(
                "invalid project name {raw_name:?}: it must contain only lower-case letters, digits, dashes and underscores, and start with a letter or digit"
            );
            let d = match span {
                Some(s)
                    if options.project_name.is_none()
                        && env.get("COMPOSE_PROJECT_NAME").is_none() =>
                {
                    Diagnostic::new(s, "name", msg)
                }
                _ => Diagnostic::general(msg),
            };
            loader
                .errors
                .push(d.with_hint(format!("try {:?}", normalize_project_name(&raw_name))));
            String::new()
        } else {
            raw_name
        }
    } else {
        normalize_project_name(&raw_name)
    };
    if name.is_empty() && loader.errors.is_empty() {
        loader.errors.push(
            Diagnostic::general(format!(
                "cannot derive a project name from {}",
                project_dir.display()
            ))
            .with_hint("set one with -p or a top-level name:"),
        );
    }

    let mut profiles: Vec<String> = options.profiles.clone();
    if let Some(p) = env.get("COMPOSE_PROFILES") {
        profiles.extend(
            p.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        );
    }

    let mut warnings = std::mem::take(&mut loader.warnings);
    let mut errors = std::mem::take(&mut loader.errors);
    let project = crate::normalize::normalize(
        &tree,
        crate::normalize::Settings {
            name,
            project_dir: &project_dir,
            profiles: &profiles,
            env: &env,
            fs,
        },
        &mut errors,
        &mut warnings,
    );
    let mut project = errors.into_result(project)?;
    project.files = displays;
    project.hostile = crate::hostile::check(&project, &tree);
    // One warning per message (an unset variable used ten times warns once, at its first use).
    let mut seen = std::collections::BTreeSet::new();
    warnings.retain(|w| seen.insert(w.message.clone()));
    project.warnings = warnings;
    Ok(project)
}

/// Load a project from the real file system.
pub fn load(options: &LoadOptions) -> Result<Project, LoadErrors> {
    load_with(options, &RealFs)
}
