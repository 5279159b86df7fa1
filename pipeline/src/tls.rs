//! TLS for the PostgreSQL-protocol connections (source, Redshift, ledger), with rustls.
//!
//! `sslmode` and `sslrootcert` mean what they mean to libpq
//! (<https://www.postgresql.org/docs/current/libpq-ssl.html>, "Protection Provided in Different
//! Modes" and "Client Verification of Server Certificates"):
//!
//! | sslmode | encryption | server certificate |
//! |---|---|---|
//! | `disable` | never | - |
//! | `prefer` (default) | if the server offers TLS, else plaintext | not verified; verified against `sslrootcert` when one is set |
//! | `require` | always | not verified; verified against `sslrootcert` when one is set (libpq's "require with a root CA file behaves like verify-ca") |
//! | `verify-ca` | always | chains to a CA in `sslrootcert` |
//! | `verify-full` | always | chains to a CA in `sslrootcert` and names the host connected to |
//!
//! `sslrootcert` is a PEM file of CA certificates, e.g. Amazon's bundles: for RDS/Aurora
//! <https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem>
//! (<https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/UsingWithRDS.SSL.html>), for Redshift
//! <https://s3.amazonaws.com/redshift-downloads/amazon-trust-ca-bundle.crt>
//! (<https://docs.aws.amazon.com/redshift/latest/mgmt/connecting-ssl-support.html>). The value
//! `system` uses the operating system's trust store instead (as libpq 16 does).
//! Plaintext is not an option against AWS by default: RDS for PostgreSQL 15 and later sets
//! `rds.force_ssl = 1`
//! (<https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/ssl-certificate-rotation-postgresql.html>),
//! and a Redshift cluster whose parameter group sets `require_ssl` refuses it
//! (<https://docs.aws.amazon.com/redshift/latest/mgmt/connecting-ssl-support.html>).
//! Differences from libpq: `allow` is not supported (use `prefer`); the default root file
//! `~/.postgresql/root.crt` is not read (set `sslrootcert`); a failed certificate check under
//! `prefer` is an error, never a silent retry in plaintext.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

/// How hard a connection insists on TLS (libpq's `sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plaintext only.
    Disable,
    /// TLS when the server offers it, plaintext otherwise (libpq's default).
    #[default]
    Prefer,
    /// TLS only; the certificate is checked only when `sslrootcert` is set.
    Require,
    /// TLS only; the certificate must chain to a CA in `sslrootcert`.
    VerifyCa,
    /// TLS only; as `verify-ca`, and the certificate must name the host.
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether the server's certificate must chain to `sslrootcert` whatever else is set.
    pub fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SslMode {
    type Err = TlsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => return Err(TlsError::Mode(other.to_owned())),
        })
    }
}

/// Where the trusted CA certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file of CA certificates.
    File(PathBuf),
    /// The operating system's trust store (`sslrootcert=system`).
    System,
}

impl RootCert {
    pub fn parse(value: &str) -> Self {
        if value == "system" {
            RootCert::System
        } else {
            RootCert::File(PathBuf::from(value))
        }
    }
}

impl fmt::Display for RootCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RootCert::File(p) => write!(f, "{}", p.display()),
            RootCert::System => f.write_str("system"),
        }
    }
}

/// The TLS settings of one connection, after merging the URL and the config keys.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsSettings {
    pub mode: SslMode,
    pub root_cert: Option<RootCert>,
}

impl fmt::Display for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sslmode={}", self.mode)?;
        if let Some(root) = &self.root_cert {
            write!(f, " sslrootcert={root}")?;
        }
        Ok(())
    }
}

/// A TLS setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "sslmode `{0}` is not one of disable, prefer, require, verify-ca, verify-full \
         (libpq's `allow` is not supported: use `prefer`)"
    )]
    Mode(String),
    #[error("sslmode={0} needs sslrootcert: a PEM file of the CAs that sign the server's certificate (for AWS, Amazon's CA bundle), or `system`")]
    RootCertMissing(SslMode),
    #[error("cannot read sslrootcert {path}: {source}")]
    RootCertRead {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("sslrootcert {path} holds no PEM certificate")]
    RootCertEmpty { path: PathBuf },
    #[error("sslrootcert {path}: no certificate in it is usable as a trust anchor: {source}")]
    RootCertUnusable {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("the system trust store holds no usable certificate")]
    SystemRootsEmpty,
    #[error("cannot set up certificate verification: {0}")]
    Verifier(#[source] rustls::client::VerifierBuilderError),
    #[error("cannot set up TLS: {0}")]
    Rustls(#[source] rustls::Error),
    #[error("{key} is `{url}` in the url but `{config}` in the config key: set it in one place")]
    Conflict {
        key: &'static str,
        url: String,
        config: String,
    },
}

/// What a finished handshake looked like, for logs and the preflight check.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TlsState {
    /// No TLS: `sslmode=disable`, or `prefer` and the server offered none.
    #[default]
    Plaintext,
    /// TLS with this protocol version and cipher suite; `peer_certificate` is the server's
    /// end-entity certificate (DER).
    Tls {
        protocol: String,
        cipher_suite: String,
        peer_certificate: Option<Vec<u8>>,
    },
}

impl TlsState {
    pub fn is_tls(&self) -> bool {
        matches!(self, TlsState::Tls { .. })
    }
}

impl fmt::Display for TlsState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsState::Plaintext => f.write_str("plaintext"),
            TlsState::Tls {
                protocol,
                cipher_suite,
                ..
            } => write!(f, "{protocol} {cipher_suite}"),
        }
    }
}

/// The crypto provider: aws-lc-rs, which the AWS SDK's HTTPS client already builds.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn load_roots(root: &RootCert) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    match root {
        RootCert::File(path) => {
            let certs = read_pem_certs(path)?;
            let mut last_error = None;
            for cert in certs {
                if let Err(e) = store.add(cert) {
                    last_error = Some(e);
                }
            }
            if store.is_empty() {
                return Err(match last_error {
                    Some(source) => TlsError::RootCertUnusable {
                        path: path.clone(),
                        source,
                    },
                    None => TlsError::RootCertEmpty { path: path.clone() },
                });
            }
        }
        RootCert::System => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = store.add(cert);
            }
            if store.is_empty() {
                return Err(TlsError::SystemRootsEmpty);
            }
        }
    }
    Ok(store)
}

fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::RootCertRead {
        path: path.to_owned(),
        source,
    })?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::RootCertEmpty {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Builds the rustls client configuration for `settings` (`None` for `disable`).
pub fn client_config(settings: &TlsSettings) -> Result<Option<Arc<ClientConfig>>, TlsError> {
    if settings.mode == SslMode::Disable {
        return Ok(None);
    }
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = match (&settings.root_cert, settings.mode) {
        (None, mode) if mode.verifies() => return Err(TlsError::RootCertMissing(mode)),
        (None, _) => Arc::new(AcceptAnyCertificate {
            provider: provider.clone(),
        }),
        (Some(root), mode) => {
            let roots = Arc::new(load_roots(root)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(TlsError::Verifier)?;
            if mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(ChainOnly { inner: webpki })
            }
        }
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Rustls)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Some(Arc::new(config)))
}

/// `prefer`/`require` without a root certificate: encryption without authentication, as libpq.
/// The handshake signatures are still checked (the server holds the certificate's key).
#[derive(Debug)]
struct AcceptAnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
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
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
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

/// `verify-ca`: the chain must reach a trusted CA; the host name is not compared.
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain (and expiry) before the name, so a name error means the
        // chain itself was accepted.
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// tokio-postgres's TLS hook over tokio-rustls; records the handshake's outcome in `state`.
#[derive(Clone)]
pub struct MakeRustlsConnect {
    config: Arc<ClientConfig>,
    state: Arc<Mutex<TlsState>>,
}

impl MakeRustlsConnect {
    pub fn new(config: Arc<ClientConfig>) -> Self {
        Self {
            config,
            state: Arc::default(),
        }
    }

    /// The outcome of the last handshake (`Plaintext` until one completed).
    pub fn state(&self) -> TlsState {
        self.state.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl<S> MakeTlsConnect<S> for MakeRustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, Self::Error> {
        Ok(RustlsConnect {
            server_name: ServerName::try_from(domain.to_owned())?,
            config: self.config.clone(),
            state: self.state.clone(),
        })
    }
}

/// One TLS handshake to come.
pub struct RustlsConnect {
    server_name: ServerName<'static>,
    config: Arc<ClientConfig>,
    state: Arc<Mutex<TlsState>>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let stream = tokio_rustls::TlsConnector::from(self.config)
                .connect(self.server_name, stream)
                .await
                .map_err(explain)?;
            let (_, session) = stream.get_ref();
            let state = TlsState::Tls {
                // "TLSv1_3" -> "TLSv1.3", as PostgreSQL's pg_stat_ssl writes it.
                protocol: session
                    .protocol_version()
                    .and_then(|v| v.as_str())
                    .unwrap_or("TLS")
                    .replace('_', "."),
                cipher_suite: session
                    .negotiated_cipher_suite()
                    .and_then(|c| c.suite().as_str())
                    .unwrap_or("unknown")
                    .to_owned(),
                peer_certificate: session
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.as_ref().to_vec()),
            };
            if let Ok(mut slot) = self.state.lock() {
                *slot = state;
            }
            Ok(RustlsStream(stream))
        })
    }
}

/// Adds what to do to a certificate error (rustls names the problem, not the fix).
fn explain(error: io::Error) -> io::Error {
    use rustls::CertificateError as C;
    let hint = match error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(c)) => match c {
            C::UnknownIssuer => {
                "the server's certificate is not signed by a CA in sslrootcert; for AWS use \
                 Amazon's bundle: RDS global-bundle.pem, Redshift amazon-trust-ca-bundle.crt"
            }
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                "connect by a name the certificate lists (the endpoint), or use sslmode=verify-ca"
            }
            C::Expired | C::ExpiredContext { .. } => "the server's certificate has expired",
            C::NotValidYet | C::NotValidYetContext { .. } => {
                "the server's certificate is not valid yet (is this machine's clock right?)"
            }
            _ => return error,
        },
        _ => return error,
    };
    io::Error::new(error.kind(), format!("{error} ({hint})"))
}

/// A TLS-wrapped connection stream.
pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        // tls-server-end-point needs the certificate's signature hash algorithm; without it
        // SCRAM runs without channel binding, as libpq's default `channel_binding=prefer`
        // does when the server offers none.
        ChannelBinding::none()
    }
}

/// A connection string with `sslmode` and `sslrootcert` taken out (tokio-postgres knows
/// neither `verify-ca`/`verify-full` nor `sslrootcert`), plus their values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitUrl {
    pub rest: String,
    pub sslmode: Option<String>,
    pub sslrootcert: Option<String>,
}

/// Takes `sslmode` and `sslrootcert` out of a `postgresql://` URL's query string or a
/// `key=value` connection string.
pub fn split_tls_params(url: &str) -> SplitUrl {
    let mut out = SplitUrl {
        rest: String::new(),
        sslmode: None,
        sslrootcert: None,
    };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            out.rest = url.to_owned();
            return out;
        };
        let mut kept = Vec::new();
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match percent_decode(key).as_str() {
                "sslmode" => out.sslmode = Some(percent_decode(value)),
                "sslrootcert" => out.sslrootcert = Some(percent_decode(value)),
                _ => kept.push(pair),
            }
        }
        out.rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
    } else {
        let mut kept = Vec::new();
        for (key, value, raw) in key_value_pairs(url) {
            match key.as_str() {
                "sslmode" => out.sslmode = Some(value),
                "sslrootcert" => out.sslrootcert = Some(value),
                _ => kept.push(raw),
            }
        }
        out.rest = kept.join(" ");
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `key = value` pairs of a libpq connection string (values optionally single-quoted with
/// backslash escapes), each with its raw text.
fn key_value_pairs(s: &str) -> Vec<(String, String, String)> {
    let chars: Vec<char> = s.chars().collect();
    let mut pairs = Vec::new();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < chars.len() && chars[*i].is_whitespace() {
            *i += 1;
        }
    };
    loop {
        skip_ws(&mut i);
        if i >= chars.len() {
            break;
        }
        let start = i;
        let mut key = String::new();
        while i < chars.len() && chars[i] != '=' && !chars[i].is_whitespace() {
            key.push(chars[i]);
            i += 1;
        }
        skip_ws(&mut i);
        if i < chars.len() && chars[i] == '=' {
            i += 1;
        }
        skip_ws(&mut i);
        let mut value = String::new();
        if i < chars.len() && chars[i] == '\'' {
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                if chars[i] == '\\' && i + 1 < chars.len() {
                    i += 1;
                }
                value.push(chars[i]);
                i += 1;
            }
            i += 1;
        } else {
            while i < chars.len() && !chars[i].is_whitespace() {
                if chars[i] == '\\' && i + 1 < chars.len() {
                    i += 1;
                }
                value.push(chars[i]);
                i += 1;
            }
        }
        let raw: String = chars[start..i.min(chars.len())].iter().collect();
        pairs.push((key, value, raw));
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_params_are_split_out_and_decoded() {
        let s = split_tls_params(
            "postgresql://u@h:5432/db?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca%20b.pem",
        );
        assert_eq!(s.rest, "postgresql://u@h:5432/db?application_name=x");
        assert_eq!(s.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(s.sslrootcert.as_deref(), Some("/etc/ca b.pem"));
        let s = split_tls_params("postgres://u@h/db?sslmode=require");
        assert_eq!(s.rest, "postgres://u@h/db");
        assert_eq!(s.sslmode.as_deref(), Some("require"));
        let s = split_tls_params("postgres://u@h/db");
        assert_eq!(s.rest, "postgres://u@h/db");
        assert_eq!(s.sslmode, None);
    }

    #[test]
    fn key_value_params_are_split_out() {
        let s = split_tls_params(
            "host=h port=5439 sslmode = verify-ca sslrootcert='/a b/c\\'d.pem' dbname=dev",
        );
        assert_eq!(s.rest, "host=h port=5439 dbname=dev");
        assert_eq!(s.sslmode.as_deref(), Some("verify-ca"));
        assert_eq!(s.sslrootcert.as_deref(), Some("/a b/c'd.pem"));
    }

    #[test]
    fn modes_parse_like_libpq_and_allow_is_refused() {
        assert_eq!(
            "verify-full".parse::<SslMode>().unwrap(),
            SslMode::VerifyFull
        );
        assert_eq!(SslMode::default(), SslMode::Prefer);
        let err = "allow".parse::<SslMode>().unwrap_err().to_string();
        assert!(err.contains("allow") && err.contains("prefer"), "{err}");
    }

    #[test]
    fn verifying_modes_need_a_root_certificate() {
        for mode in [SslMode::VerifyCa, SslMode::VerifyFull] {
            let err = client_config(&TlsSettings {
                mode,
                root_cert: None,
            })
            .unwrap_err()
            .to_string();
            assert!(err.contains("sslrootcert"), "{err}");
        }
        assert!(client_config(&TlsSettings::default()).unwrap().is_some());
        assert!(client_config(&TlsSettings {
            mode: SslMode::Disable,
            root_cert: None
        })
        .unwrap()
        .is_none());
    }

    #[test]
    fn unreadable_and_empty_root_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = client_config(&TlsSettings {
            mode: SslMode::VerifyFull,
            root_cert: Some(RootCert::File(missing.clone())),
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains(&missing.display().to_string()), "{err}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = client_config(&TlsSettings {
            mode: SslMode::VerifyCa,
            root_cert: Some(RootCert::File(empty)),
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("no PEM certificate"), "{err}");
    }
}
