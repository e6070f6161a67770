//! The events websocket (`/1.0/events`): lifecycle, operation and logging events.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use serde::{Deserialize, Serialize};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{Client, Request};
use crate::error::{Error, RequestLabel, Result};
use crate::transport;

/// Which events to receive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFilter {
    /// Event types: `lifecycle`, `operation`, `logging` (empty: all).
    pub types: Vec<String>,
    /// Events of every project instead of the client's project.
    pub all_projects: bool,
}

impl Default for EventFilter {
    /// Lifecycle and operation events of the client's project.
    fn default() -> Self {
        EventFilter {
            types: vec!["lifecycle".into(), "operation".into()],
            all_projects: false,
        }
    }
}

/// One event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Event {
    /// `lifecycle`, `operation`, `logging`.
    #[serde(rename = "type")]
    pub kind: String,
    /// When (RFC 3339).
    pub timestamp: String,
    /// Type-specific content; see [`Event::lifecycle`].
    pub metadata: serde_json::Value,
    /// Cluster member it came from.
    pub location: String,
    /// Project it belongs to.
    pub project: String,
}

/// The metadata of a `lifecycle` event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LifecycleEvent {
    /// e.g. `instance-created`, `instance-started`.
    pub action: String,
    /// The object's URL, e.g. `/1.0/instances/web-1?project=shop`.
    pub source: String,
    /// Extra details.
    pub context: serde_json::Value,
    /// Name of the object when given.
    pub name: String,
    /// Project of the object when given.
    pub project: String,
    /// Who asked (`username`, `protocol`, `address`); null when Incus acted on its own, e.g.
    /// an instance's `boot.autorestart` restart after its init exited.
    pub requestor: serde_json::Value,
}

impl LifecycleEvent {
    /// The last path segment of `source` (the object's name), query removed, decoded.
    pub fn object_name(&self) -> String {
        let path = self.source.split('?').next().unwrap_or_default();
        let last = path.rsplit('/').next().unwrap_or_default();
        percent_encoding::percent_decode_str(last)
            .decode_utf8_lossy()
            .into_owned()
    }
}

impl Event {
    /// The lifecycle details, for `lifecycle` events.
    pub fn lifecycle(&self) -> Option<LifecycleEvent> {
        if self.kind != "lifecycle" {
            return None;
        }
        serde_json::from_value(self.metadata.clone()).ok()
    }
}

/// A stream of events; also a [`futures_util::Stream`].
pub struct EventStream {
    ws: WebSocketStream<transport::Stream>,
    request: RequestLabel,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("request", &self.request)
            .finish()
    }
}

impl EventStream {
    /// The next event; `None` when the server closed the stream.
    pub async fn next_event(&mut self) -> Option<Result<Event>> {
        futures_util::StreamExt::next(self).await
    }
}

impl Stream for EventStream {
    type Item = Result<Event>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            let msg = match Pin::new(&mut this.ws).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Some(Err(Error::WebSocket {
                        request: this.request.clone(),
                        source: Box::new(e),
                    })));
                }
                Poll::Ready(Some(Ok(m))) => m,
            };
            let bytes: &[u8] = match &msg {
                Message::Text(t) => t.as_bytes(),
                Message::Binary(b) => b,
                Message::Close(_) => return Poll::Ready(None),
                // Pings are answered by tungstenite; nothing to yield.
                _ => continue,
            };
            let decoded = serde_json::from_slice::<serde_json::Value>(bytes).and_then(|mut v| {
                crate::client::strip_nulls(&mut v);
                serde_json::from_value::<Event>(v)
            });
            return Poll::Ready(Some(decoded.map_err(|source| Error::Decode {
                request: this.request.clone(),
                source,
                body_start: String::from_utf8_lossy(bytes).chars().take(200).collect(),
            })));
        }
    }
}

impl Client {
    /// Open the events websocket (`GET /1.0/events?type=...`). Events already pass
    /// through every cluster member's stream, so one connection sees the whole cluster.
    pub async fn events(&self, filter: &EventFilter) -> Result<EventStream> {
        let mut req = Request::get("/1.0/events");
        if !filter.types.is_empty() {
            req = req.query("type", filter.types.join(","));
        }
        if filter.all_projects {
            req = req.query("all-projects", "true");
        }
        let request = RequestLabel {
            method: "GET".into(),
            path: req.path_and_query(self.project()),
        };
        let ws = self.websocket(req).await?;
        Ok(EventStream { ws, request })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_event_parses_with_object_name() {
        let e: Event = serde_json::from_str(
            r#"{"type":"lifecycle","timestamp":"2026-01-01T00:00:00Z","location":"node2","project":"shop",
                "metadata":{"action":"instance-created","source":"/1.0/instances/web%2D1?project=shop",
                "context":{"type":"container"},"requestor":{"username":"root"}}}"#,
        )
        .unwrap();
        assert_eq!(e.kind, "lifecycle");
        assert_eq!(e.location, "node2");
        let l = e.lifecycle().unwrap();
        assert_eq!(l.action, "instance-created");
        assert_eq!(l.object_name(), "web-1");
    }

    #[test]
    fn operation_events_have_no_lifecycle_view() {
        let e: Event =
            serde_json::from_str(r#"{"type":"operation","metadata":{"id":"x"}}"#).unwrap();
        assert!(e.lifecycle().is_none());
    }
}
