//! The transport-agnostic client and its one request core. Resource modules
//! (`instances.rs`, `cluster.rs`, ...) add typed methods on [`Client`] built on
//! [`Client::send`], [`Client::send_operation`] and [`Client::websocket`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::OnceCell;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::config::{self, Address, Env, LoadedConfig, ProcessEnv};
use crate::error::{Error, RequestLabel, Result, chain};
use crate::operations::{Operation, PendingOperation};
use crate::server::ServerInfo;
use crate::transport::https::{self, ServerTrust};
use crate::transport::{Connector, Endpoint, Stream};

/// Requests this process sent to Incus (every client, every thread), by method: GET, POST,
/// PUT, PATCH, DELETE, anything else (a websocket upgrade counts as a GET).
static SENT: [std::sync::atomic::AtomicU64; 6] =
    [const { std::sync::atomic::AtomicU64::new(0) }; 6];

fn count(method: &Method) {
    let k = match *method {
        Method::GET => 0,
        Method::POST => 1,
        Method::PUT => 2,
        Method::PATCH => 3,
        Method::DELETE => 4,
        _ => 5,
    };
    SENT[k].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// How many requests this process sent to Incus so far, by method
/// (`[("GET", n), ("POST", n), ...]`, methods never used left out), for benchmarks: a
/// converged `up` makes a fixed number of them whatever the number of instances.
pub fn requests_sent() -> Vec<(&'static str, u64)> {
    ["GET", "POST", "PUT", "PATCH", "DELETE", "other"]
        .into_iter()
        .zip(&SENT)
        .map(|(m, n)| (m, n.load(std::sync::atomic::Ordering::Relaxed)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// With `INCUS_COMPOSE_REQUEST_LOG=FILE` in the environment, every request is appended to FILE
/// as one line: the program's name, the method, the path with its query, the milliseconds
/// until the answer's head, and when it was sent (milliseconds after the process's first
/// request: a timeline of the run). For measuring which requests a command or a test suite makes
/// (`scripts/request-profile` sums such a file); off (one environment read) otherwise.
fn log_request(method: &Method, path: &str, sent_at: std::time::Instant) {
    use std::io::Write;
    static LOG: std::sync::OnceLock<Option<std::sync::Mutex<std::fs::File>>> =
        std::sync::OnceLock::new();
    static FIRST: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let log = LOG.get_or_init(|| {
        let file = std::env::var_os("INCUS_COMPOSE_REQUEST_LOG")?;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
            .ok()?;
        Some(std::sync::Mutex::new(f))
    });
    let Some(log) = log else {
        return;
    };
    let program = std::env::args()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_default();
    let first = *FIRST.get_or_init(|| sent_at);
    let line = format!(
        "{program} {method} {path} {} {}\n",
        sent_at.elapsed().as_millis(),
        sent_at.saturating_duration_since(first).as_millis()
    );
    if let Ok(mut f) = log.lock() {
        let _ = f.write_all(line.as_bytes());
    }
}

/// Characters left as they are in a path segment or query value: RFC 3986 unreserved.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encode one path segment or query value (`testapp/v1` -> `testapp%2Fv1`).
pub fn encode_component(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}

/// Build an API path from raw segments, each percent-encoded:
/// `api_path(&["instances", "web-1", "state"])` -> `/1.0/instances/web-1/state`.
pub fn api_path(segments: &[&str]) -> String {
    let mut p = String::from("/1.0");
    for s in segments {
        p.push('/');
        p.push_str(&encode_component(s));
    }
    p
}

/// Whether a request is about something inside an Incus project (instances, networks,
/// volumes, images, operations, events) or global (server, cluster, storage pools, projects).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Gets the client's `?project=`.
    Project,
    /// Never gets `?project=`.
    Global,
}

/// One API request, before it is sent. Build with [`Request::new`] or the method shortcuts.
#[derive(Debug, Clone)]
pub struct Request {
    method: Method,
    path: String,
    query: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    scope: Scope,
    if_match: Option<String>,
    headers: Vec<(String, String)>,
    content_type: &'static str,
}

impl Request {
    /// A request for `path` (already encoded, e.g. from [`api_path`]), project-scoped.
    pub fn new(method: Method, path: impl Into<String>) -> Request {
        Request {
            method,
            path: path.into(),
            query: Vec::new(),
            body: None,
            scope: Scope::Project,
            if_match: None,
            headers: Vec::new(),
            content_type: "application/json",
        }
    }
    /// `GET path`.
    pub fn get(path: impl Into<String>) -> Request {
        Request::new(Method::GET, path)
    }
    /// `POST path`.
    pub fn post(path: impl Into<String>) -> Request {
        Request::new(Method::POST, path)
    }
    /// `PUT path`.
    pub fn put(path: impl Into<String>) -> Request {
        Request::new(Method::PUT, path)
    }
    /// `PATCH path`.
    pub fn patch(path: impl Into<String>) -> Request {
        Request::new(Method::PATCH, path)
    }
    /// `DELETE path`.
    pub fn delete(path: impl Into<String>) -> Request {
        Request::new(Method::DELETE, path)
    }
    /// Add a query parameter (the value is encoded when sent).
    pub fn query(mut self, key: &str, value: impl Into<String>) -> Request {
        self.query.push((key.to_string(), value.into()));
        self
    }
    /// Add `?target=member` when given (cluster member selection).
    pub fn target(self, target: Option<&str>) -> Request {
        match target {
            Some(t) => self.query("target", t),
            None => self,
        }
    }
    /// Mark the request as not project-scoped.
    pub fn global(mut self) -> Request {
        self.scope = Scope::Global;
        self
    }
    /// Set a JSON body.
    /// Config maps and devices in it are checked first ([`crate::safety`]): a value with a
    /// line break where Incus or LXC reads lines is never sent.
    pub fn json<B: Serialize + ?Sized>(mut self, body: &B) -> Result<Request> {
        let what = || format!("body of {} {}", self.method, self.path);
        let value = serde_json::to_value(body).map_err(|e| Error::InvalidInput {
            what: what(),
            message: e.to_string(),
        })?;
        crate::safety::check_body(&value).map_err(|message| Error::InvalidInput {
            what: what(),
            message: format!("{message}; refused before sending (incus-compose writes no line break into Incus config)"),
        })?;
        let bytes = serde_json::to_vec(&value).map_err(|e| Error::InvalidInput {
            what: what(),
            message: e.to_string(),
        })?;
        self.body = Some(bytes);
        Ok(self)
    }
    /// Send `If-Match: etag`: Incus refuses the change (HTTP 412) if the object changed
    /// since the ETag was read (see [`Client::send_with_etag`]).
    pub fn if_match(mut self, etag: Option<String>) -> Request {
        self.if_match = etag;
        self
    }
    /// Set a raw body sent as `application/octet-stream` (file uploads).
    pub fn body(mut self, bytes: Vec<u8>) -> Request {
        self.body = Some(bytes);
        self.content_type = "application/octet-stream";
        self
    }
    /// Add a request header (e.g. `X-Incus-mode`).
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Request {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    /// Path with encoded query, adding `project` for project-scoped requests when set and
    /// not given explicitly.
    pub(crate) fn path_and_query(&self, project: Option<&str>) -> String {
        let mut params: Vec<(&str, &str)> = Vec::new();
        if self.scope == Scope::Project
            && let Some(p) = project
            && !self
                .query
                .iter()
                .any(|(k, _)| k == "project" || k == "all-projects")
        {
            params.push(("project", p));
        }
        params.extend(self.query.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let mut out = self.path.clone();
        for (i, (k, v)) in params.iter().enumerate() {
            out.push(if i == 0 { '?' } else { '&' });
            out.push_str(&encode_component(k));
            out.push('=');
            out.push_str(&encode_component(v));
        }
        out
    }
}

/// A raw answer: status and body, for endpoints that do not answer JSON (console log).
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// `ETag` header, if any.
    pub etag: Option<String>,
    /// `X-Incus-*` headers (names lowercased), e.g. a file's `x-incus-mode`.
    pub incus_headers: std::collections::BTreeMap<String, String>,
    /// `Date` header, if any: the server's clock when it answered (IMF-fixdate, whole seconds).
    pub date: Option<String>,
    /// Body bytes.
    pub body: Bytes,
    /// The body was longer than the limit asked ([`Client::send_raw_bounded`]) and `body` is
    /// its beginning.
    pub truncated: bool,
}

/// Incus's response envelope.
#[derive(Debug, serde::Deserialize)]
struct Envelope {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_code: u16,
    #[serde(default)]
    metadata: serde_json::Value,
}

struct Inner {
    endpoint: Arc<Endpoint>,
    http: HyperClient<Connector, Full<Bytes>>,
    remote: String,
    server: OnceCell<ServerInfo>,
}

/// An Incus API client: cheap to clone; clones share the connection pool.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    project: Option<String>,
    timeout: Option<Duration>,
}

/// How long one HTTP request may take by default (operation waits ask the server for at
/// most 30 s at a time, so this only catches a server that stopped answering).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("remote", &self.inner.remote)
            .field("endpoint", &self.inner.endpoint)
            .field("project", &self.project)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Client {
    /// A client for an endpoint; `remote` is the name shown in messages.
    pub fn new(endpoint: Endpoint, remote: impl Into<String>) -> Client {
        let endpoint = Arc::new(endpoint);
        let mut builder = HyperClient::builder(TokioExecutor::new());
        builder.pool_idle_timeout(Duration::from_secs(30));
        if matches!(*endpoint, Endpoint::Unix { .. }) {
            // No idle connections on the unix socket. Incus 6.0's unix listener peeks at
            // the first bytes of each new connection inside its accept loop, so a connection
            // that was opened but never used (hyper opens one in the background when a pooled
            // one frees up first, and keeps it idle) blocks every later connection to the
            // daemon, including LXC's start/stop hooks (`incusd callhook`), which then time
            // out after 30 s and fail the start or stop. A unix connect costs microseconds.
            builder.pool_max_idle_per_host(0);
        }
        let http = builder.build(Connector {
            endpoint: endpoint.clone(),
        });
        Client {
            inner: Arc::new(Inner {
                endpoint,
                http,
                remote: remote.into(),
                server: OnceCell::new(),
            }),
            project: None,
            timeout: Some(DEFAULT_REQUEST_TIMEOUT),
        }
    }

    /// A client for the unix socket at `path`.
    pub fn unix(path: impl Into<std::path::PathBuf>) -> Client {
        Client::new(
            Endpoint::Unix {
                path: path.into(),
                reason: "given path".into(),
            },
            "local",
        )
    }

    /// A client for the local daemon, found like the incus CLI does
    /// (`INCUS_SOCKET`, `$INCUS_DIR/unix.socket`, default locations).
    pub fn local() -> Client {
        let c = config::local_socket(&ProcessEnv);
        Client::new(
            Endpoint::Unix {
                path: c.path,
                reason: c.reason.into(),
            },
            "local",
        )
    }

    /// A client for a remote of the incus CLI's configuration (`None`: `INCUS_REMOTE`, else the
    /// configured default remote), with its client certificate and pinned server certificate,
    /// in `INCUS_PROJECT` or else the remote's project.
    pub fn from_cli_config(remote: Option<&str>) -> Result<Client> {
        Client::from_cli_config_with(&ProcessEnv, remote)
    }

    /// [`Client::from_cli_config`] with an explicit environment.
    pub fn from_cli_config_with(env: &dyn Env, remote: Option<&str>) -> Result<Client> {
        let loaded = LoadedConfig::load(env)?;
        // Like the CLI: INCUS_REMOTE replaces the configured default remote.
        let env_remote = env.var("INCUS_REMOTE");
        let (name, r) = loaded
            .config
            .remote(remote.or(env_remote.as_deref()), &loaded.file())?;
        if r.protocol != "incus" {
            return Err(Error::UnsupportedRemote {
                name,
                addr: r.addr,
                protocol: r.protocol,
            });
        }
        let endpoint = match config::parse_address(&r.addr)? {
            Address::Unix(Some(path)) => Endpoint::Unix {
                path,
                reason: format!("remote {name:?}"),
            },
            Address::Unix(None) => {
                let c = config::local_socket(env);
                Endpoint::Unix {
                    path: c.path,
                    reason: c.reason.into(),
                }
            }
            Address::Https { host, port } => {
                let identity = match loaded.client_cert() {
                    Some((crt, key)) => Some(https::load_identity(&crt, &key)?),
                    None => None,
                };
                let trust = match loaded.server_cert(&name) {
                    Some(p) => ServerTrust::Pinned(https::load_pinned(&p)?),
                    None => ServerTrust::SystemRoots,
                };
                let tls = https::client_config(identity, trust)?;
                Endpoint::Https {
                    host,
                    port,
                    tls: Arc::new(tls),
                }
            }
        };
        let client = Client::new(endpoint, name);
        // Like the CLI: INCUS_PROJECT wins over the remote's project.
        let project = env
            .var("INCUS_PROJECT")
            .or_else(|| (!r.project.is_empty()).then_some(r.project));
        Ok(match project {
            Some(p) => client.with_project(p),
            None => client,
        })
    }

    /// A client to the same server with connections of its own (not shared with `self`'s
    /// pool), e.g. for a task on another runtime or thread that must not wait behind `self`'s
    /// requests (the project lock's renewal).
    pub fn independent(&self) -> Client {
        let mut c = Client::new((*self.inner.endpoint).clone(), self.inner.remote.clone());
        c.project = self.project.clone();
        c.timeout = self.timeout;
        c
    }

    /// The same client (sharing connections) working in another Incus project.
    pub fn with_project(&self, project: impl Into<String>) -> Client {
        Client {
            inner: self.inner.clone(),
            project: Some(project.into()),
            timeout: self.timeout,
        }
    }

    /// The same client with another per-request time limit (`None`: no limit), e.g. for
    /// large uploads. Websockets are not limited.
    pub fn with_request_timeout(&self, timeout: Option<Duration>) -> Client {
        Client {
            timeout,
            ..self.clone()
        }
    }

    /// The project project-scoped requests go to (`None`: the server's default).
    pub fn project(&self) -> Option<&str> {
        self.project.as_deref()
    }

    /// The remote's name.
    pub fn remote(&self) -> &str {
        &self.inner.remote
    }

    /// Where requests go.
    pub fn endpoint(&self) -> &Endpoint {
        &self.inner.endpoint
    }

    pub(crate) fn label(&self, req: &Request) -> RequestLabel {
        RequestLabel {
            method: req.method.to_string(),
            path: req.path_and_query(self.project.as_deref()),
        }
    }

    fn connect_error(&self, source: std::io::Error) -> Error {
        let hint = match self.inner.endpoint.as_ref() {
            Endpoint::Unix { reason, .. } => format!(
                " (socket chosen by {reason}; is incusd running and is this user allowed to use it? \
                 Set INCUS_SOCKET or INCUS_DIR, or pick a remote with --remote)"
            ),
            Endpoint::Https { .. } => format!(
                " (remote {:?}; check the address in the incus CLI configuration and that this client's certificate is trusted by the server)",
                self.inner.remote
            ),
        };
        Error::Connect {
            endpoint: self.inner.endpoint.describe(),
            hint,
            source,
        }
    }

    /// Send a request and return the raw answer, whatever its status.
    pub async fn send_raw(&self, req: Request) -> Result<RawResponse> {
        self.send_raw_bounded(req, None).await
    }

    /// [`Client::send_raw`] reading at most `max_body` bytes of the answer (streamed: more
    /// is never held in memory) when given; a longer answer is cut there and marked
    /// [`RawResponse::truncated`].
    pub async fn send_raw_bounded(
        &self,
        req: Request,
        max_body: Option<usize>,
    ) -> Result<RawResponse> {
        let Some(limit) = self.timeout else {
            return self.send_raw_unlimited(req, max_body).await;
        };
        let label = self.label(&req);
        match tokio::time::timeout(limit, self.send_raw_unlimited(req, max_body)).await {
            Ok(r) => r,
            Err(_) => Err(Error::Transport {
                request: label,
                endpoint: self.inner.endpoint.describe(),
                message: format!(
                    "no complete answer within {} s (see Client::with_request_timeout)",
                    limit.as_secs()
                ),
            }),
        }
    }

    async fn send_raw_unlimited(
        &self,
        req: Request,
        max_body: Option<usize>,
    ) -> Result<RawResponse> {
        let label = self.label(&req);
        let uri = format!("http://{}{}", self.inner.endpoint.authority(), label.path);
        let mut builder = http::Request::builder()
            .method(req.method.clone())
            .uri(&uri);
        // Always name the body's type: Incus parses form-encoded bodies as query values.
        if req.body.is_some() {
            builder = builder.header(http::header::CONTENT_TYPE, req.content_type);
        }
        for (k, v) in &req.headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        if let Some(etag) = &req.if_match {
            builder = builder.header(http::header::IF_MATCH, etag);
        }
        let http_req = builder
            .body(Full::new(Bytes::from(req.body.unwrap_or_default())))
            .map_err(|e| Error::InvalidInput {
                what: label.to_string(),
                message: e.to_string(),
            })?;
        tracing::debug!(request = %label, "incus request");
        count(&req.method);
        let sent_at = std::time::Instant::now();
        let resp = self.inner.http.request(http_req).await;
        log_request(&req.method, &label.path, sent_at);
        let resp = match resp {
            Ok(r) => r,
            Err(e) if e.is_connect() => {
                let io = find_io_error(&e).unwrap_or_else(|| std::io::Error::other(chain(&e)));
                return Err(self.connect_error(io));
            }
            Err(e) => {
                return Err(Error::Transport {
                    request: label,
                    endpoint: self.inner.endpoint.describe(),
                    message: chain(&e),
                });
            }
        };
        let status = resp.status().as_u16();
        let header = |name: http::header::HeaderName| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let content_type = header(http::header::CONTENT_TYPE);
        let etag = header(http::header::ETAG);
        let date = header(http::header::DATE);
        let incus_headers = resp
            .headers()
            .iter()
            .filter(|(k, _)| k.as_str().starts_with("x-incus-"))
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        // Streamed; with `max_body`, reading stops there (the rest is never held).
        let mut stream = resp.into_body();
        let mut buf: Vec<u8> = Vec::new();
        let mut truncated = false;
        while let Some(frame) = stream.frame().await {
            let frame = frame.map_err(|e| Error::Transport {
                request: label.clone(),
                endpoint: self.inner.endpoint.describe(),
                message: format!("reading response body: {}", chain(&e)),
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if let Some(limit) = max_body {
                if buf.len() + data.len() > limit {
                    buf.extend_from_slice(&data[..limit - buf.len()]);
                    truncated = true;
                    break;
                }
            }
            buf.extend_from_slice(&data);
        }
        let body = Bytes::from(buf);
        Ok(RawResponse {
            status,
            content_type,
            etag,
            incus_headers,
            date,
            body,
            truncated,
        })
    }

    /// Send a request whose success answer is raw bytes (a file download): any 2xx body is
    /// returned as it is, even if it happens to look like JSON; any other status is an
    /// [`Error::Api`] with Incus's error message.
    pub(crate) async fn send_for_bytes(&self, req: Request) -> Result<Bytes> {
        self.send_for_raw(req).await.map(|raw| raw.body)
    }

    /// [`Client::send_for_bytes`] keeping the headers of the answer.
    pub(crate) async fn send_for_raw(&self, req: Request) -> Result<RawResponse> {
        self.send_for_raw_bounded(req, None).await
    }

    /// [`Client::send_for_raw`] reading at most `max_body` bytes (see
    /// [`Client::send_raw_bounded`]).
    pub(crate) async fn send_for_raw_bounded(
        &self,
        req: Request,
        max_body: Option<usize>,
    ) -> Result<RawResponse> {
        let label = self.label(&req);
        let raw = self.send_raw_bounded(req, max_body).await?;
        if (200..300).contains(&raw.status) {
            return Ok(raw);
        }
        let envelope = serde_json::from_slice::<Envelope>(&raw.body).ok();
        let status = envelope
            .as_ref()
            .map(|e| e.error_code)
            .filter(|c| *c != 0)
            .unwrap_or(raw.status);
        let message = envelope
            .map(|e| e.error)
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| String::from_utf8_lossy(&raw.body).trim().to_string());
        Err(Error::Api {
            request: label,
            status,
            message,
        })
    }

    /// Send a request, turning error answers into [`Error::Api`]; returns the envelope.
    async fn send_envelope(
        &self,
        req: Request,
    ) -> Result<(RequestLabel, Option<String>, Envelope)> {
        let (label, etag, _, env) = self.send_envelope_dated(req).await?;
        Ok((label, etag, env))
    }

    /// [`Client::send_envelope`], also returning the `Date` header.
    async fn send_envelope_dated(
        &self,
        req: Request,
    ) -> Result<(RequestLabel, Option<String>, Option<String>, Envelope)> {
        let label = self.label(&req);
        let raw = self.send_raw(req).await?;
        let env: Envelope = match serde_json::from_slice(&raw.body) {
            Ok(e) => e,
            Err(source) => {
                if !(200..300).contains(&raw.status) {
                    return Err(Error::Api {
                        request: label,
                        status: raw.status,
                        message: String::from_utf8_lossy(&raw.body).trim().to_string(),
                    });
                }
                return Err(Error::Decode {
                    request: label,
                    source,
                    body_start: body_start(&raw.body),
                });
            }
        };
        if env.kind == "error" || !(200..300).contains(&raw.status) {
            let status = if env.error_code != 0 {
                env.error_code
            } else {
                raw.status
            };
            let message = if env.error.is_empty() {
                format!("HTTP {} with no error message", raw.status)
            } else {
                env.error
            };
            return Err(Error::Api {
                request: label,
                status,
                message,
            });
        }
        Ok((label, raw.etag, raw.date, env))
    }

    /// Like [`Client::send_with_etag`], also returning the `Date` header of the answer (the
    /// server's clock, for leases judged on the server's time).
    pub async fn send_with_etag_and_date<T: DeserializeOwned>(
        &self,
        req: Request,
    ) -> Result<(T, Option<String>, Option<String>)> {
        let (label, etag, date, mut env) = self.send_envelope_dated(req).await?;
        strip_nulls(&mut env.metadata);
        let body_start_text = env.metadata.to_string();
        let value = serde_json::from_value(env.metadata).map_err(|source| Error::Decode {
            request: label,
            source,
            body_start: body_start(body_start_text.as_bytes()),
        })?;
        Ok((value, etag, date))
    }

    /// Send a request answered synchronously and decode its `metadata`.
    pub async fn send<T: DeserializeOwned>(&self, req: Request) -> Result<T> {
        self.send_with_etag(req).await.map(|(v, _)| v)
    }

    /// Like [`Client::send`], also returning the `ETag` header, for a later
    /// read-modify-write with [`Request::if_match`].
    pub async fn send_with_etag<T: DeserializeOwned>(
        &self,
        req: Request,
    ) -> Result<(T, Option<String>)> {
        let (label, etag, mut env) = self.send_envelope(req).await?;
        strip_nulls(&mut env.metadata);
        let body_start_text = env.metadata.to_string();
        let value = serde_json::from_value(env.metadata).map_err(|source| Error::Decode {
            request: label,
            source,
            body_start: body_start(body_start_text.as_bytes()),
        })?;
        Ok((value, etag))
    }

    /// Send a request and ignore the answer's `metadata` (only errors matter).
    /// If Incus runs it as a background operation, wait for it.
    pub async fn send_unit(&self, req: Request) -> Result<()> {
        let (label, _, env) = self.send_envelope(req).await?;
        if env.kind == "async" {
            let op = decode_operation(&label, env.metadata)?;
            PendingOperation::new(self.clone(), label, op)
                .wait()
                .await?;
        }
        Ok(())
    }

    /// Send a request that Incus runs as a background operation (HTTP 202).
    pub async fn send_operation(&self, req: Request) -> Result<PendingOperation> {
        let (label, _, env) = self.send_envelope(req).await?;
        if env.kind != "async" {
            return Err(Error::Decode {
                request: label,
                source: serde::de::Error::custom(format!(
                    "expected a background operation, got response type {:?}",
                    env.kind
                )),
                body_start: body_start(env.metadata.to_string().as_bytes()),
            });
        }
        let op = decode_operation(&label, env.metadata)?;
        Ok(PendingOperation::new(self.clone(), label, op))
    }

    /// Open a websocket on any API path (events, exec streams, ...).
    pub async fn websocket(&self, req: Request) -> Result<WebSocketStream<Stream>> {
        self.websocket_on(req, false).await
    }

    /// [`Client::websocket`] for a socket we only read from: writes the server no longer
    /// takes count as done (see [`Stream::ReadOnly`]), so nothing it sent before closing is lost.
    pub async fn websocket_read_only(&self, req: Request) -> Result<WebSocketStream<Stream>> {
        self.websocket_on(req, true).await
    }

    async fn websocket_on(&self, req: Request, read_only: bool) -> Result<WebSocketStream<Stream>> {
        let label = self.label(&req);
        let ws_err = |e: tokio_tungstenite::tungstenite::Error| Error::WebSocket {
            request: label.clone(),
            source: Box::new(e),
        };
        let url = format!("ws://{}{}", self.inner.endpoint.authority(), label.path);
        count(&Method::GET);
        let ws_req = url.into_client_request().map_err(ws_err)?;
        let stream = self
            .inner
            .endpoint
            .connect()
            .await
            .map_err(|e| self.connect_error(e))?;
        let stream = if read_only {
            Stream::ReadOnly(Box::new(stream))
        } else {
            stream
        };
        match tokio_tungstenite::client_async(ws_req, stream).await {
            Ok((ws, _)) => Ok(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let status = resp.status().as_u16();
                let message = resp
                    .body()
                    .as_ref()
                    .and_then(|b| serde_json::from_slice::<Envelope>(b).ok())
                    .map(|e| e.error)
                    .filter(|m| !m.is_empty())
                    .unwrap_or_else(|| format!("websocket upgrade refused with HTTP {status}"));
                Err(Error::Api {
                    request: label,
                    status,
                    message,
                })
            }
            Err(e) => Err(ws_err(e)),
        }
    }

    /// Server information (`GET /1.0`), fetched once per client and cached.
    pub async fn server_info(&self) -> Result<&ServerInfo> {
        self.inner
            .server
            .get_or_try_init(|| async { self.server().await })
            .await
    }

    /// Fail with [`Error::MissingExtension`] unless the server has API extension `extension`;
    /// `feature` names what needs it, for the message.
    pub async fn require_extension(&self, extension: &str, feature: &str) -> Result<()> {
        self.server_info()
            .await?
            .require_extension(extension, feature)
    }
}

fn decode_operation(label: &RequestLabel, mut metadata: serde_json::Value) -> Result<Operation> {
    strip_nulls(&mut metadata);
    let text = metadata.to_string();
    serde_json::from_value(metadata).map_err(|source| Error::Decode {
        request: label.clone(),
        source,
        body_start: body_start(text.as_bytes()),
    })
}

/// Remove `null` members of JSON objects, recursively. Incus (Go) sends empty lists and
/// maps as `null`; without the member, `#[serde(default)]` gives the empty value.
pub(crate) fn strip_nulls(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

fn body_start(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    s.chars().take(200).collect()
}

fn find_io_error(e: &(dyn std::error::Error + 'static)) -> Option<std::io::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(std::io::Error::new(io.kind(), io.to_string()));
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_lists_from_go_decode_as_empty() {
        let mut v = serde_json::json!([{"name": "n", "used_by": null, "config": null,
            "locations": ["a"], "nested": {"x": null}}]);
        strip_nulls(&mut v);
        assert_eq!(
            v,
            serde_json::json!([{"name": "n", "locations": ["a"], "nested": {}}])
        );
        let nets: Vec<crate::Network> = serde_json::from_value(v).unwrap();
        assert!(nets[0].used_by.is_empty());
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(
            api_path(&["images", "aliases", "testapp/v1"]),
            "/1.0/images/aliases/testapp%2Fv1"
        );
        assert_eq!(
            api_path(&["instances", "web-1", "state"]),
            "/1.0/instances/web-1/state"
        );
        assert_eq!(api_path(&["a b", "ü?#"]), "/1.0/a%20b/%C3%BC%3F%23");
    }

    #[test]
    fn project_is_added_to_project_scoped_requests_only() {
        let r = Request::post("/1.0/instances").target(Some("node2"));
        assert_eq!(
            r.path_and_query(Some("x")),
            "/1.0/instances?project=x&target=node2"
        );
        assert_eq!(r.path_and_query(None), "/1.0/instances?target=node2");
        let g = Request::get("/1.0/cluster/members")
            .query("recursion", "1")
            .global();
        assert_eq!(
            g.path_and_query(Some("x")),
            "/1.0/cluster/members?recursion=1"
        );
    }

    #[test]
    fn explicit_project_or_all_projects_is_not_overridden() {
        let r = Request::get("/1.0/events").query("all-projects", "true");
        assert_eq!(r.path_and_query(Some("x")), "/1.0/events?all-projects=true");
        let r = Request::get("/1.0/instances").query("project", "other");
        assert_eq!(r.path_and_query(Some("x")), "/1.0/instances?project=other");
    }

    #[test]
    fn query_values_are_encoded() {
        let r = Request::get("/1.0/instances").query("filter", "name eq a&b=c");
        assert_eq!(
            r.path_and_query(None),
            "/1.0/instances?filter=name%20eq%20a%26b%3Dc"
        );
    }

    #[test]
    fn request_label_shows_method_and_full_path() {
        let c = Client::unix("/nonexistent/unix.socket").with_project("shop");
        let r = Request::post("/1.0/instances").target(Some("node2"));
        assert_eq!(
            c.label(&r).to_string(),
            "POST /1.0/instances?project=shop&target=node2"
        );
    }

    struct MapEnv(std::collections::HashMap<&'static str, String>);
    impl Env for MapEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).cloned()
        }
        fn exists(&self, path: &std::path::Path) -> bool {
            path.exists()
        }
    }

    fn conf_dir(yaml: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("config.yml"), yaml).unwrap();
        d
    }

    const TWO_REMOTES: &str = "default-remote: a\nremotes:\n  a:\n    addr: unix:///run/a.sock\n    project: pa\n  b:\n    addr: unix:///run/b.sock\n  img:\n    addr: https://images.example\n    protocol: simplestreams\n";

    fn endpoint_path(c: &Client) -> String {
        match c.endpoint() {
            Endpoint::Unix { path, .. } => path.display().to_string(),
            other => panic!("expected a unix endpoint, got {other:?}"),
        }
    }

    #[test]
    fn cli_config_default_remote_and_its_project_are_used() {
        let d = conf_dir(TWO_REMOTES);
        let env = MapEnv([("INCUS_CONF", d.path().display().to_string())].into());
        let c = Client::from_cli_config_with(&env, None).unwrap();
        assert_eq!(c.remote(), "a");
        assert_eq!(endpoint_path(&c), "/run/a.sock");
        assert_eq!(c.project(), Some("pa"));
        let c = Client::from_cli_config_with(&env, Some("b")).unwrap();
        assert_eq!(endpoint_path(&c), "/run/b.sock");
        assert_eq!(c.project(), None);
    }

    #[test]
    fn incus_remote_and_incus_project_override_the_configuration_like_the_cli() {
        let d = conf_dir(TWO_REMOTES);
        let env = MapEnv(
            [
                ("INCUS_CONF", d.path().display().to_string()),
                ("INCUS_REMOTE", "b".to_string()),
                ("INCUS_PROJECT", "pz".to_string()),
            ]
            .into(),
        );
        let c = Client::from_cli_config_with(&env, None).unwrap();
        assert_eq!(c.remote(), "b");
        assert_eq!(c.project(), Some("pz"));
        // An explicit --remote still wins over INCUS_REMOTE.
        let c = Client::from_cli_config_with(&env, Some("a")).unwrap();
        assert_eq!(c.remote(), "a");
        assert_eq!(c.project(), Some("pz"));
    }

    #[test]
    fn local_remote_follows_incus_dir_and_image_servers_are_refused() {
        let d = conf_dir(TWO_REMOTES);
        let env = MapEnv(
            [
                ("INCUS_CONF", d.path().display().to_string()),
                ("INCUS_DIR", "/srv/incus".to_string()),
            ]
            .into(),
        );
        let c = Client::from_cli_config_with(&env, Some("local")).unwrap();
        assert_eq!(endpoint_path(&c), "/srv/incus/unix.socket");
        let err = Client::from_cli_config_with(&env, Some("img")).unwrap_err();
        assert!(matches!(err, Error::UnsupportedRemote { .. }), "{err}");
        assert!(err.to_string().contains("simplestreams"), "{err}");
    }

    #[tokio::test]
    async fn a_server_that_never_answers_hits_the_request_timeout() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("silent.socket");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let keep = tokio::spawn(async move {
            let (conn, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(conn);
        });
        let c = Client::unix(&path).with_request_timeout(Some(Duration::from_millis(200)));
        let err = c.server().await.unwrap_err();
        assert!(matches!(err, Error::Transport { .. }), "{err:?}");
        assert!(err.to_string().starts_with("GET /1.0: "), "{err}");
        assert!(err.to_string().contains("no complete answer"), "{err}");
        keep.abort();
    }

    #[tokio::test]
    async fn missing_socket_is_a_connect_error_that_says_where_and_why() {
        let c = Client::new(
            Endpoint::Unix {
                path: "/nonexistent/unix.socket".into(),
                reason: "INCUS_DIR".into(),
            },
            "local",
        );
        let err = c.server().await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Connect { .. }), "{msg}");
        assert!(msg.contains("/nonexistent/unix.socket"), "{msg}");
        assert!(msg.contains("INCUS_DIR"), "{msg}");
    }
}
