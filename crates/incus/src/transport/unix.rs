//! The local unix socket transport.

use std::io;
use std::path::Path;
use std::time::Duration;

use tokio::net::UnixStream;

/// How long to wait for a socket connection before giving up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connect to the socket at `path`.
pub async fn connect(path: &Path) -> io::Result<UnixStream> {
    match tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(path)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()),
        )),
    }
}
