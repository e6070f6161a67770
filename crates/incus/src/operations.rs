//! Background operations: a request answered with HTTP 202 gives an [`Operation`]; wait for
//! it with [`PendingOperation::wait`], which turns a failed operation into
//! [`Error::Operation`] naming the request that started it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::client::{Client, Request, api_path};
use crate::error::{Error, RequestLabel, Result};

/// Operation status codes (Incus `api.StatusCode`).
pub mod status {
    /// Operation created.
    pub const CREATED: u16 = 100;
    /// Running.
    pub const RUNNING: u16 = 103;
    /// Succeeded.
    pub const SUCCESS: u16 = 200;
    /// Failed.
    pub const FAILURE: u16 = 400;
    /// Cancelled.
    pub const CANCELLED: u16 = 401;
}

/// An Incus operation (`/1.0/operations/{id}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Operation {
    /// UUID.
    pub id: String,
    /// `task`, `websocket` or `token`.
    pub class: String,
    /// What it does, e.g. `Creating instance`.
    pub description: String,
    /// Creation time (RFC 3339).
    pub created_at: String,
    /// Last update (RFC 3339).
    pub updated_at: String,
    /// `Running`, `Success`, `Failure`, ...
    pub status: String,
    /// Numeric status (see [`status`]).
    pub status_code: u16,
    /// Affected resources by kind (`instances: ["/1.0/instances/web-1"]`).
    pub resources: BTreeMap<String, Vec<String>>,
    /// Operation-specific data (e.g. exec websocket secrets, return code).
    pub metadata: serde_json::Value,
    /// Whether it can be cancelled.
    pub may_cancel: bool,
    /// Error message when it failed.
    pub err: String,
    /// Cluster member running it.
    pub location: String,
}

impl Operation {
    /// Whether it has finished (successfully or not).
    pub fn is_done(&self) -> bool {
        self.status_code >= 200
    }
    /// Whether it finished successfully.
    pub fn is_success(&self) -> bool {
        self.status_code == status::SUCCESS
    }
}

/// An operation started by a request, not yet waited for.
#[derive(Debug, Clone)]
pub struct PendingOperation {
    client: Client,
    request: RequestLabel,
    /// The operation as first returned.
    pub operation: Operation,
}

/// How long one `/wait` call may block on the server before we ask again.
const WAIT_SLICE_SECS: u64 = 30;

impl PendingOperation {
    pub(crate) fn new(client: Client, request: RequestLabel, operation: Operation) -> Self {
        PendingOperation {
            client,
            request,
            operation,
        }
    }

    /// The operation id.
    pub fn id(&self) -> &str {
        &self.operation.id
    }

    /// The request that started it.
    pub fn request(&self) -> &RequestLabel {
        &self.request
    }

    /// Wait until the operation is done; a failed or cancelled operation is an
    /// [`Error::Operation`] carrying its `err` message and the starting request.
    pub async fn wait(self) -> Result<Operation> {
        self.wait_inner(None).await
    }

    /// Like [`PendingOperation::wait`] but give up after `timeout`, returning the
    /// operation as last seen (not done) so the caller can decide.
    pub async fn wait_timeout(self, timeout: Duration) -> Result<Operation> {
        self.wait_inner(Some(timeout)).await
    }

    async fn wait_inner(self, timeout: Option<Duration>) -> Result<Operation> {
        let start = Instant::now();
        let mut op = self.operation.clone();
        while !op.is_done() {
            let slice = match timeout {
                Some(t) => {
                    let left = t.saturating_sub(start.elapsed());
                    if left.is_zero() {
                        return Ok(op);
                    }
                    left.as_secs().clamp(1, WAIT_SLICE_SECS)
                }
                None => WAIT_SLICE_SECS,
            };
            let waited = self
                .client
                .send::<Operation>(
                    Request::get(api_path(&["operations", &op.id, "wait"]))
                        .query("timeout", slice.to_string()),
                )
                .await;
            op = match waited {
                Ok(o) => o,
                // Incus answers `/wait` on a failed operation with an error response carrying
                // the operation's `err`; the operation itself (GET) still says what it was.
                Err(Error::Api {
                    status, message, ..
                }) => match self.client.operation(&op.id).await {
                    Ok(o) if o.is_done() => o,
                    _ if status == 404 && message.contains("Operation not found") => {
                        return Err(Error::Api {
                            request: self.request,
                            status,
                            message: format!(
                                "background operation {} ({}) {}",
                                op.id,
                                op.description,
                                crate::error::VANISHED
                            ),
                        });
                    }
                    _ => Operation {
                        status: "Failure".into(),
                        status_code: status::FAILURE,
                        err: message,
                        ..op
                    },
                },
                Err(e) => return Err(e),
            };
        }
        if op.is_success() {
            Ok(op)
        } else {
            Err(Error::Operation {
                request: self.request,
                operation: Box::new(op),
            })
        }
    }

    /// Ask Incus to cancel the operation.
    pub async fn cancel(&self) -> Result<()> {
        self.client.cancel_operation(&self.operation.id).await
    }
}

impl Client {
    /// `GET /1.0/operations/{id}`.
    pub async fn operation(&self, id: &str) -> Result<Operation> {
        self.send(Request::get(api_path(&["operations", id]))).await
    }

    /// `GET /1.0/operations?recursion=1`: operations by status (`running`, `success`...).
    pub async fn operations(&self) -> Result<BTreeMap<String, Vec<Operation>>> {
        self.send(Request::get("/1.0/operations").query("recursion", "1"))
            .await
    }

    /// `DELETE /1.0/operations/{id}`: cancel.
    pub async fn cancel_operation(&self, id: &str) -> Result<()> {
        self.send_unit(Request::delete(api_path(&["operations", id])))
            .await
    }
}
