//! A TLS front for the test API server, as a pod meets the real one: HTTPS
//! with a certificate issued by the cluster's CA, for the address the client
//! dials.
//!
//! [`TestCa`] is a throwaway certificate authority. [`TlsFront`] listens on
//! 127.0.0.1, completes each TLS handshake with a server certificate the CA
//! issued for `127.0.0.1` and `localhost`, and pipes the decrypted bytes to
//! the plain-HTTP server behind it, so the HTTP the client speaks is served
//! unchanged.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{crypto, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// A certificate authority of its own.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    /// A new CA, named `name` (its common name).
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("empty SANs");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("a CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("a self-signed CA");
        TestCa { issuer }
    }

    /// The CA's certificate, PEM: what a kubeconfig's
    /// `certificate-authority` file holds.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for 127.0.0.1 and localhost, and its key.
    fn server_certificate(&self) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned()]).expect("a DNS name SAN");
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        let key = KeyPair::generate().expect("a server key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("a server certificate");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (cert.der().clone(), key)
    }
}

/// HTTPS on 127.0.0.1, piped to a plain-HTTP server. Dropping it stops
/// accepting.
pub struct TlsFront {
    address: SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
}

impl TlsFront {
    /// Serves TLS with a certificate `ca` issued, in front of the HTTP
    /// server at `backend`.
    pub async fn start(ca: &TestCa, backend: SocketAddr) -> TlsFront {
        let (cert, key) = ca.server_certificate();
        // The provider named, not the process default: ring is the one the
        // proxy's client uses, and nothing here installs a default.
        let config =
            ServerConfig::builder_with_provider(Arc::new(crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("ring supports the default TLS versions")
                .with_no_client_auth()
                .with_single_cert(vec![cert], key)
                .expect("the server certificate and its key match");
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let address = listener.local_addr().expect("local address");
        let accepting = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(pipe(acceptor.clone(), stream, backend));
            }
        });
        TlsFront { address, accepting }
    }

    /// The front's URL, e.g. `https://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("https://{}", self.address)
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

/// One connection: the handshake, then bytes both ways until either side
/// closes. A failed handshake (a client that does not trust the CA) just
/// ends the connection, as a real server's does.
async fn pipe(acceptor: TlsAcceptor, stream: TcpStream, backend: SocketAddr) {
    let Ok(mut tls) = acceptor.accept(stream).await else {
        return;
    };
    let Ok(mut plain) = TcpStream::connect(backend).await else {
        return;
    };
    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
}
