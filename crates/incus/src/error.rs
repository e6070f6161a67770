//! The one error type of the client. Every variant says what failed, where, and (when the
//! fix is not obvious) what to do about it.

use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A request as it was sent: method and path with query, e.g.
/// `POST /1.0/instances?project=x&target=node2`. Carried by errors so they name what failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLabel {
    /// HTTP method (`GET`, `POST`, ...).
    pub method: String,
    /// Path and query string as sent.
    pub path: String,
}

impl std::fmt::Display for RequestLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

/// Everything that can go wrong talking to Incus.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Incus answered with an error response (`"type": "error"` or a non-2xx status).
    #[error("{request}: {message} (HTTP {status})")]
    Api {
        /// The request that failed.
        request: RequestLabel,
        /// HTTP status (Incus's `error_code` when present).
        status: u16,
        /// Incus's own error message.
        message: String,
    },

    /// A background operation started by `request` ended in failure (or was cancelled).
    #[error("{request}: {} failed: {}", operation.description, failure_message(operation))]
    Operation {
        /// The request that started the operation.
        request: RequestLabel,
        /// The operation as it ended: `err` holds Incus's message, `description` what it did.
        operation: Box<crate::operations::Operation>,
    },

    /// Could not reach the server at all.
    #[error("cannot connect to Incus at {endpoint}: {source}{hint}")]
    Connect {
        /// Where we tried (socket path or https address).
        endpoint: String,
        /// Extra advice, e.g. which variables were consulted; may be empty.
        hint: String,
        /// Underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The HTTP exchange itself failed (connection dropped, malformed response, TLS failure...).
    #[error("{request}: request to {endpoint} failed: {message}")]
    Transport {
        /// The request that failed.
        request: RequestLabel,
        /// Where it was sent.
        endpoint: String,
        /// What went wrong, with all causes.
        message: String,
    },

    /// Incus's answer could not be understood.
    #[error("{request}: cannot decode Incus's response: {source} (body starts: {body_start:?})")]
    Decode {
        /// The request whose answer was bad.
        request: RequestLabel,
        /// Decoder error.
        #[source]
        source: serde_json::Error,
        /// First bytes of the body, for diagnosis.
        body_start: String,
    },

    /// The events (or another) websocket failed.
    #[error("websocket {request}: {source}")]
    WebSocket {
        /// The upgrade request.
        request: RequestLabel,
        /// Websocket error.
        #[source]
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },

    /// The incus CLI configuration could not be read or parsed.
    #[error("incus client configuration {path}: {message}")]
    Config {
        /// The file (or directory) at fault.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },

    /// The requested remote is not in the incus CLI configuration.
    #[error(
        "no Incus remote named {name:?} in {config}; known remotes: {known} (add it with `incus remote add`)"
    )]
    UnknownRemote {
        /// Requested remote.
        name: String,
        /// The configuration file consulted.
        config: String,
        /// Known remote names, comma separated.
        known: String,
    },

    /// The remote exists but is not an Incus API server (e.g. a `simplestreams` image server).
    #[error(
        "remote {name:?} ({addr}) uses protocol {protocol:?}: only Incus API servers (protocol \"incus\") can run instances"
    )]
    UnsupportedRemote {
        /// Remote name.
        name: String,
        /// Its address.
        addr: String,
        /// Its protocol.
        protocol: String,
    },

    /// TLS setup (certificates, keys) failed.
    #[error("TLS setup for {what}: {message}")]
    Tls {
        /// What was being set up (a file path or the remote).
        what: String,
        /// What went wrong and what to do.
        message: String,
    },

    /// The server lacks an API extension a feature needs.
    #[error(
        "{feature} needs the Incus API extension {extension:?}, which server {server} (Incus {version}) does not have; upgrade Incus or avoid this feature"
    )]
    MissingExtension {
        /// The feature asked for, in words.
        feature: String,
        /// The missing extension.
        extension: String,
        /// The server's name.
        server: String,
        /// The server's version.
        version: String,
    },

    /// Something did not happen in the time allowed.
    #[error("timed out waiting for {what}: {message}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// What was seen last.
        message: String,
    },

    /// Streamed output (exec, console) could not be written where the caller wanted it
    /// (e.g. a closed pipe).
    #[error("{request}: cannot write the output: {source}")]
    Output {
        /// The request whose output it was.
        request: RequestLabel,
        /// The local write error.
        #[source]
        source: std::io::Error,
    },

    /// Incus lists an instance but cannot read it from its cluster member (see
    /// [`crate::Instance::is_stand_in`]), even when asked again.
    #[error(
        "instance {instance:?} (Incus project {project:?}) on cluster member {member:?} cannot be read: {message}; is {member} online? (`incus cluster list`)"
    )]
    Unreadable {
        /// Instance name.
        instance: String,
        /// Its Incus project.
        project: String,
        /// The member Incus places it on.
        member: String,
        /// Incus's last answer.
        message: String,
    },

    /// An answer was longer than the caller allows (a file read back from an instance, whose
    /// contents its container controls): reading stopped at the limit.
    #[error("{request}: the answer is larger than {limit} bytes; reading stopped there")]
    TooLarge {
        /// The request whose answer was too long.
        request: RequestLabel,
        /// The limit, in bytes.
        limit: usize,
    },

    /// A value handed to the client cannot be sent (bad address, body that will not serialize).
    #[error("invalid request {what}: {message}")]
    InvalidInput {
        /// Which input.
        what: String,
        /// What is wrong with it.
        message: String,
    },
}

impl Error {
    /// The HTTP status of an API error, if this is one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True when Incus said the object does not exist (HTTP 404).
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// True when a background operation ended and Incus forgot it before its result was read
    /// (a finished operation is kept about 5 s; a loaded cluster can answer the first `/wait`
    /// later than that): it may have succeeded or failed, the object it made or changed says.
    pub fn is_vanished_operation(&self) -> bool {
        matches!(self, Error::Api { status: 404, message, .. } if message.contains(VANISHED))
    }

    /// True when Incus refused to create something because an object of that name exists
    /// (HTTP 409, or Incus 6.0's HTTP 500 "... already exists" or "UNIQUE constraint failed"). Never transient: retrying
    /// cannot succeed, and the object may not be the caller's.
    pub fn is_already_exists(&self) -> bool {
        self.status() == Some(409)
            || self.incus_message().is_some_and(|m| {
                let m = m.to_ascii_lowercase();
                // The database's own words when two creations of one name race.
                m.contains("already exists") || m.contains("unique constraint failed")
            })
    }

    /// The message Incus itself gave (API error or failed operation), if any.
    pub fn incus_message(&self) -> Option<&str> {
        match self {
            Error::Api { message, .. } => Some(message),
            Error::Operation { operation, .. } => Some(&operation.err),
            _ => None,
        }
    }

    /// The request that failed, when the error belongs to one.
    pub fn request(&self) -> Option<&RequestLabel> {
        match self {
            Error::Api { request, .. }
            | Error::Operation { request, .. }
            | Error::Transport { request, .. }
            | Error::Decode { request, .. }
            | Error::WebSocket { request, .. }
            | Error::Output { request, .. } => Some(request),
            _ => None,
        }
    }
}

fn failure_message(op: &crate::operations::Operation) -> &str {
    if op.err.is_empty() {
        if op.status.is_empty() {
            "no error message"
        } else {
            &op.status
        }
    } else {
        &op.err
    }
}

/// Render an error with all its causes, `a: b: c`.
pub(crate) fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}

/// The words of the error a vanished operation gives ([`Error::is_vanished_operation`]).
pub(crate) const VANISHED: &str = "vanished before its result was read";

#[cfg(test)]
mod tests {
    use super::*;

    fn label(method: &str, path: &str) -> RequestLabel {
        RequestLabel {
            method: method.into(),
            path: path.into(),
        }
    }

    #[test]
    fn only_a_vanished_operation_counts_as_one() {
        let api = |status, message: String| Error::Api {
            request: label("POST", "/1.0/instances"),
            status,
            message,
        };
        assert!(
            api(
                404,
                format!("background operation 0c35 (Creating instance) {VANISHED}")
            )
            .is_vanished_operation()
        );
        assert!(!api(404, "Operation not found".into()).is_vanished_operation());
        assert!(!api(500, VANISHED.into()).is_vanished_operation());
    }

    #[test]
    fn api_error_names_request_message_and_status() {
        let e = Error::Api {
            request: label("POST", "/1.0/instances?project=x&target=node2"),
            status: 409,
            message: "Failed creating instance record: Instance \"web-1\" already exists".into(),
        };
        assert_eq!(
            e.to_string(),
            "POST /1.0/instances?project=x&target=node2: Failed creating instance record: Instance \"web-1\" already exists (HTTP 409)"
        );
        assert_eq!(e.status(), Some(409));
        assert!(!e.is_not_found());
        assert!(e.is_already_exists());
        // Incus 6.0 answers the same refusal with HTTP 500.
        let e6 = Error::Api {
            request: label("POST", "/1.0/instances?project=x"),
            status: 500,
            message: "Failed creating instance record: Instance \"web-1\" already exists".into(),
        };
        assert!(e6.is_already_exists());
        let raced = Error::Api {
            request: label("POST", "/1.0/instances?project=x"),
            status: 500,
            message: "Failed creating instance record: Add instance info to the database: Failed to create \"instances\" entry: UNIQUE constraint failed: instances.project_id, instances.name".into(),
        };
        assert!(raced.is_already_exists());
        let busy = Error::Api {
            request: label("POST", "/1.0/instances?project=x"),
            status: 500,
            message: "database is locked".into(),
        };
        assert!(!busy.is_already_exists());
        assert_eq!(e.request().map(|r| r.method.as_str()), Some("POST"));
    }

    #[test]
    fn operation_error_names_request_description_and_err() {
        let e = Error::Operation {
            request: label("PUT", "/1.0/instances/web-1/state"),
            operation: Box::new(crate::operations::Operation {
                id: "abc".into(),
                description: "Starting instance".into(),
                status: "Failure".into(),
                status_code: 400,
                err: "Failed to run: boom".into(),
                ..Default::default()
            }),
        };
        assert_eq!(
            e.to_string(),
            "PUT /1.0/instances/web-1/state: Starting instance failed: Failed to run: boom"
        );
        assert_eq!(e.incus_message(), Some("Failed to run: boom"));
    }
}
