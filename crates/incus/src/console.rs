//! Attaching to an instance's console (`POST /1.0/instances/{name}/console`, type `console`)
//! over the operation's websockets: what the instance's first process writes to its
//! console, live, as it is written.
//!
//! Incus (liblxc) lets one client at a time attach to a container's console; a second
//! attach fails with Incus's message. Attaching does not consume the console ring buffer
//! that [`Client::instance_console_log`] reads.

use futures_util::StreamExt;
use serde::Serialize;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::client::{Client, Request, api_path};
use crate::error::{Error, Result};
use crate::exec::WebSocket;
use crate::operations::PendingOperation;

#[derive(Serialize)]
struct ConsolePost {
    #[serde(rename = "type")]
    kind: &'static str,
    width: u32,
    height: u32,
}

/// An attached console; detach with [`ConsoleSession::close`] (or by dropping it).
#[derive(Debug)]
pub struct ConsoleSession {
    /// The console operation; it ends when the console is detached.
    pub operation: PendingOperation,
    /// Terminal bytes both ways (binary messages).
    pub console: WebSocket,
    /// Control socket (window size).
    pub control: WebSocket,
}

impl Client {
    /// Attach to the console of running instance `name` with a `width` x `height` terminal.
    pub async fn console_attach(
        &self,
        name: &str,
        width: u32,
        height: u32,
    ) -> Result<ConsoleSession> {
        let body = ConsolePost {
            kind: "console",
            width,
            height,
        };
        let operation = self
            .send_operation(Request::post(api_path(&["instances", name, "console"])).json(&body)?)
            .await?;
        let fds = operation.operation.metadata.get("fds").cloned();
        let label = operation.request().clone();
        let secret = |fd: &str| -> Result<String> {
            fds.as_ref()
                .and_then(|f| f.get(fd))
                .and_then(|s| s.as_str())
                .map(str::to_string)
                .ok_or_else(|| Error::InvalidInput {
                    what: label.to_string(),
                    message: format!("console operation has no websocket secret for fd {fd:?}"),
                })
        };
        let id = operation.id().to_string();
        let connect = |secret: String| {
            let id = id.clone();
            async move {
                self.websocket(
                    Request::get(api_path(&["operations", &id, "websocket"]))
                        .query("secret", secret),
                )
                .await
            }
        };
        let console = connect(secret("0")?).await?;
        let control = connect(secret("control")?).await?;
        Ok(ConsoleSession {
            operation,
            console,
            control,
        })
    }
}

impl ConsoleSession {
    /// The next chunk of console output; `None` once the server closed the console (the
    /// instance stopped, or the console was detached).
    pub async fn next_output(&mut self) -> Result<Option<Vec<u8>>> {
        while let Some(msg) = self.console.next().await {
            match msg {
                // An empty data message is Incus's end-of-output barrier.
                Ok(Message::Binary(b)) if b.is_empty() => return Ok(None),
                Ok(Message::Text(t)) if t.is_empty() => return Ok(None),
                Ok(Message::Binary(b)) => return Ok(Some(b.to_vec())),
                Ok(Message::Text(t)) => return Ok(Some(t.as_bytes().to_vec())),
                Ok(Message::Close(_)) => return Ok(None),
                Ok(_) => {}
                Err(
                    tungstenite::Error::ConnectionClosed
                    | tungstenite::Error::AlreadyClosed
                    | tungstenite::Error::Protocol(
                        tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                    ),
                ) => return Ok(None),
                Err(e) => {
                    return Err(Error::WebSocket {
                        request: self.operation.request().clone(),
                        source: Box::new(e),
                    });
                }
            }
        }
        Ok(None)
    }

    /// Detach: close both websockets (Incus then ends the console operation).
    pub async fn close(mut self) {
        let _ = self.console.close(None).await;
        let _ = self.control.close(None).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_body_asks_for_the_console_with_a_size() {
        let v = serde_json::to_value(ConsolePost {
            kind: "console",
            width: 80,
            height: 24,
        })
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "console", "width": 80, "height": 24})
        );
    }
}
