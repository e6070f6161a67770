//! HTTPS transport: rustls (ring provider) with the incus CLI's client certificate, and the
//! server certificate either pinned (`servercerts/<remote>.crt`, accepted only when
//! byte-identical, handshake signatures still verified) or verified against the system roots.
//! There is deliberately no way to turn verification off.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::error::{Error, Result};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// How the server's certificate is checked.
#[derive(Debug, Clone)]
pub enum ServerTrust {
    /// Accept exactly this certificate (DER), as the incus CLI does with `servercerts/<remote>.crt`.
    Pinned(CertificateDer<'static>),
    /// Verify the chain and name against the system's root certificates.
    SystemRoots,
}

/// A client certificate chain and its private key.
#[derive(Debug)]
pub struct ClientIdentity {
    /// Certificate chain, leaf first.
    pub certs: Vec<CertificateDer<'static>>,
    /// Private key.
    pub key: PrivateKeyDer<'static>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Read a PEM certificate chain and key (e.g. the CLI's `client.crt` / `client.key`).
pub fn load_identity(crt: &Path, key: &Path) -> Result<ClientIdentity> {
    let certs = CertificateDer::pem_file_iter(crt)
        .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| Error::Tls {
            what: crt.display().to_string(),
            message: format!("cannot read client certificate (PEM): {e}"),
        })?;
    if certs.is_empty() {
        return Err(Error::Tls {
            what: crt.display().to_string(),
            message: "no certificate in file".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| Error::Tls {
        what: key.display().to_string(),
        message: format!("cannot read client key (PEM): {e}"),
    })?;
    Ok(ClientIdentity { certs, key })
}

/// Read a pinned server certificate (PEM, first certificate in the file).
pub fn load_pinned(path: &Path) -> Result<CertificateDer<'static>> {
    CertificateDer::from_pem_file(path).map_err(|e| Error::Tls {
        what: path.display().to_string(),
        message: format!("cannot read pinned server certificate (PEM): {e}"),
    })
}

/// Build the rustls client configuration.
pub fn client_config(
    identity: Option<ClientIdentity>,
    trust: ServerTrust,
) -> Result<rustls::ClientConfig> {
    let provider = provider();
    let tls_err = |message: String| Error::Tls {
        what: "client configuration".into(),
        message,
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(e.to_string()))?;
    let builder = match trust {
        ServerTrust::Pinned(cert) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier::new(cert, provider))),
        ServerTrust::SystemRoots => {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // Unparsable system certificates are skipped, as browsers do.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(tls_err(
                    "no system root certificates found and no pinned server certificate; \
                     add the remote with `incus remote add` (which pins its certificate) \
                     or install ca-certificates"
                        .into(),
                ));
            }
            builder.with_root_certificates(roots)
        }
    };
    match identity {
        Some(id) => builder
            .with_client_auth_cert(id.certs, id.key)
            .map_err(|e| tls_err(format!("client certificate/key rejected: {e}"))),
        None => Ok(builder.with_no_client_auth()),
    }
}

/// Accepts exactly one server certificate (byte-equal DER), whatever its names or issuer,
/// and still checks that the server proves possession of its key.
#[derive(Debug)]
pub struct PinnedVerifier {
    pinned: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl PinnedVerifier {
    /// A verifier for `pinned`, using `provider`'s signature algorithms.
    pub fn new(pinned: CertificateDer<'static>, provider: Arc<CryptoProvider>) -> Self {
        PinnedVerifier { pinned, provider }
    }
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.pinned.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "server certificate differs from the pinned one (servercerts/<remote>.crt): \
                 the server changed its certificate or this is not the expected server"
                    .into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// TCP connect and TLS handshake.
pub async fn connect(
    host: &str,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
) -> io::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{host:?}: {e}")))?;
    let fut = async {
        let tcp = TcpStream::connect((host, port)).await?;
        tcp.set_nodelay(true)?;
        TlsConnector::from(tls).connect(name, tcp).await
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no TLS connection within {}s", CONNECT_TIMEOUT.as_secs()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::server::WebPkiClientVerifier;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    struct Generated {
        cert: CertificateDer<'static>,
        key: PrivateKeyDer<'static>,
    }

    fn generate(name: &str) -> Generated {
        let ck = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        Generated {
            cert: ck.cert.der().clone(),
            key: PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap(),
        }
    }

    /// A TLS server on 127.0.0.1 presenting `server`, optionally requiring `client_ca` as client cert.
    async fn serve(
        server: Generated,
        client_ca: Option<CertificateDer<'static>>,
    ) -> (
        u16,
        tokio::task::JoinHandle<std::result::Result<String, String>>,
    ) {
        let provider = provider();
        let b = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let b = match client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(ca).unwrap();
                b.with_client_cert_verifier(
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .unwrap(),
                )
            }
            None => b.with_no_client_auth(),
        };
        let cfg = b.with_single_cert(vec![server.cert], server.key).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let h = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
            let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
            let mut buf = [0u8; 5];
            tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            tls.write_all(b"pong!").await.map_err(|e| e.to_string())?;
            tls.shutdown().await.map_err(|e| e.to_string())?;
            Ok(String::from_utf8_lossy(&buf).into_owned())
        });
        (port, h)
    }

    #[tokio::test]
    async fn pinned_verifier_accepts_exactly_the_pinned_certificate() {
        // The certificate names another host: pinning ignores names, as the incus CLI does.
        let server = generate("incus-member.invalid");
        let pinned = server.cert.clone();
        let (port, h) = serve(server, None).await;
        let cfg = client_config(None, ServerTrust::Pinned(pinned)).unwrap();
        let mut s = connect("127.0.0.1", port, Arc::new(cfg)).await.unwrap();
        s.write_all(b"ping!").await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"pong!");
        assert_eq!(h.await.unwrap().unwrap(), "ping!");
    }

    #[tokio::test]
    async fn pinned_verifier_rejects_a_different_certificate() {
        let server = generate("localhost");
        let other = generate("localhost");
        let (port, h) = serve(server, None).await;
        let cfg = client_config(None, ServerTrust::Pinned(other.cert)).unwrap();
        let err = match connect("127.0.0.1", port, Arc::new(cfg)).await {
            Ok(_) => panic!("handshake with an unpinned certificate must fail"),
            Err(e) => e,
        };
        assert!(
            err.to_string().contains("differs from the pinned"),
            "unexpected error: {err}"
        );
        assert!(h.await.unwrap().is_err());
    }

    #[tokio::test]
    async fn system_roots_reject_a_self_signed_server() {
        let server = generate("localhost");
        let (port, _h) = serve(server, None).await;
        // Without ca-certificates installed there are no roots: that is an error too.
        match client_config(None, ServerTrust::SystemRoots) {
            Ok(cfg) => {
                let r = connect("localhost", port, Arc::new(cfg)).await;
                assert!(r.is_err(), "self-signed certificate must not be trusted");
            }
            Err(e) => assert!(e.to_string().contains("no system root"), "{e}"),
        }
    }

    #[tokio::test]
    async fn client_certificate_is_presented_from_pem_files() {
        let server = generate("localhost");
        let pinned = server.cert.clone();
        let client = rcgen::generate_simple_self_signed(vec!["client".to_string()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (crt, key) = (dir.path().join("client.crt"), dir.path().join("client.key"));
        std::fs::write(&crt, client.cert.pem()).unwrap();
        std::fs::write(&key, client.signing_key.serialize_pem()).unwrap();
        let (port, h) = serve(server, Some(client.cert.der().clone())).await;
        let id = load_identity(&crt, &key).unwrap();
        let cfg = client_config(Some(id), ServerTrust::Pinned(pinned)).unwrap();
        let mut s = connect("127.0.0.1", port, Arc::new(cfg)).await.unwrap();
        s.write_all(b"hello").await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"pong!");
        assert_eq!(h.await.unwrap().unwrap(), "hello");
    }

    #[test]
    fn unreadable_pem_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let crt = dir.path().join("server.crt");
        std::fs::write(&crt, "not a certificate").unwrap();
        let err = load_pinned(&crt).unwrap_err().to_string();
        assert!(err.contains("server.crt"), "{err}");
    }
}
