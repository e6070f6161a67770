//! Byte streams to an Incus server: a unix socket or TLS over TCP. The same streams serve
//! plain HTTP requests (through hyper's pooled client) and websocket upgrades to any path
//! (events, and later exec), so every transport supports both.

pub mod https;
pub mod unix;

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::client::TlsStream;

/// Where the server is and how to reach it.
#[derive(Clone)]
pub enum Endpoint {
    /// A local unix socket.
    Unix {
        /// Socket path.
        path: PathBuf,
        /// How the path was chosen, for error messages (e.g. `INCUS_DIR`).
        reason: String,
    },
    /// HTTPS with a client certificate (optional) and a verified server certificate.
    Https {
        /// Host name or IP address.
        host: String,
        /// TCP port.
        port: u16,
        /// TLS settings (client identity, pinned certificate or system roots).
        tls: Arc<rustls::ClientConfig>,
    },
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Endpoint {
    /// A human description: the socket path or `https://host:port`.
    pub fn describe(&self) -> String {
        match self {
            Endpoint::Unix { path, .. } => format!("unix socket {}", path.display()),
            Endpoint::Https { host, port, .. } => {
                if host.contains(':') {
                    format!("https://[{host}]:{port}")
                } else {
                    format!("https://{host}:{port}")
                }
            }
        }
    }

    /// The authority used in request URIs and Host headers.
    pub(crate) fn authority(&self) -> String {
        match self {
            // Incus ignores the Host header on its unix socket; any valid name will do.
            Endpoint::Unix { .. } => "incus.socket".to_string(),
            Endpoint::Https { host, port, .. } => {
                if host.contains(':') {
                    format!("[{host}]:{port}")
                } else {
                    format!("{host}:{port}")
                }
            }
        }
    }

    /// Open a fresh byte stream to the server (TLS handshake included).
    pub async fn connect(&self) -> io::Result<Stream> {
        match self {
            Endpoint::Unix { path, .. } => unix::connect(path).await.map(Stream::Unix),
            Endpoint::Https { host, port, tls } => https::connect(host, *port, tls.clone())
                .await
                .map(|s| Stream::Tls(Box::new(s))),
        }
    }
}

/// A connected byte stream to the server.
pub enum Stream {
    /// Unix socket.
    Unix(UnixStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
    /// A stream we only read from (an exec's stdout or stderr websocket): a write the server
    /// no longer takes (it closed its end: `EPIPE`, a reset) counts as done. The websocket
    /// library answers the server's keepalive pings on every read; when the server has sent
    /// the last output and closed, that answer fails, and the library reported the failure
    /// instead of the frames still waiting to be read: the output was lost (one exec in
    /// about 25 under load).
    ReadOnly(Box<Stream>),
}

/// Whether a write failed because the server closed its end.
fn peer_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::NotConnected
    )
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stream::Unix(_) => "Stream::Unix",
            Stream::Tls(_) => "Stream::Tls",
            Stream::ReadOnly(_) => "Stream::ReadOnly",
        })
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::ReadOnly(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::ReadOnly(s) => match Pin::new(s.as_mut()).poll_write(cx, buf) {
                Poll::Ready(Err(e)) if peer_gone(&e) => Poll::Ready(Ok(buf.len())),
                other => other,
            },
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::ReadOnly(s) => match Pin::new(s.as_mut()).poll_flush(cx) {
                Poll::Ready(Err(e)) if peer_gone(&e) => Poll::Ready(Ok(())),
                other => other,
            },
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::ReadOnly(s) => match Pin::new(s.as_mut()).poll_shutdown(cx) {
                Poll::Ready(Err(e)) if peer_gone(&e) => Poll::Ready(Ok(())),
                other => other,
            },
        }
    }
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

/// hyper connector that ignores the URI and dials the endpoint.
#[derive(Clone, Debug)]
pub(crate) struct Connector {
    pub(crate) endpoint: Arc<Endpoint>,
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<Stream>>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let endpoint = self.endpoint.clone();
        Box::pin(async move { endpoint.connect().await.map(TokioIo::new) })
    }
}
