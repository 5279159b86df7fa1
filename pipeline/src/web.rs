//! HTTP serving the way Prometheus exporters do it: exporter-toolkit's web configuration file
//! (`--web.config.file`: TLS server certificate, client certificate verification, basic auth
//! users with bcrypt hashes), served with rustls.
//!
//! The file format is exporter-toolkit's
//! (<https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md>), so a
//! file written for node_exporter or postgres_exporter works here. Supported: `cert`/`cert_file`,
//! `key`/`key_file`, `client_ca`/`client_ca_file`, `client_auth_type` (`NoClientCert`,
//! `VerifyClientCertIfGiven`, `RequireAndVerifyClientCert`), `min_version`/`max_version`
//! (`TLS12`, `TLS13`), `http_server_config.headers` and `basic_auth_users`
//! (`http_server_config.http2` is accepted; the binaries speak HTTP/1.1). Settings rustls cannot honour (TLS 1.0/1.1, Go cipher suite and curve
//! names, client types that accept unverified certificates, `client_allowed_sans`,
//! `rate_limit`) are refused with the key's name rather than silently ignored. Relative paths
//! are relative to the web config file's directory, as in exporter-toolkit.
//!
//! `/healthz` answers without credentials (a liveness probe has none); every other path needs
//! a basic auth user when `basic_auth_users` is set, except the paths the binary lists as
//! taking its own bearer token (the remediator's `/alerts` and `/-/reload`).

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

use crate::secret::Secret;

/// The path that answers without credentials: liveness and readiness probes carry none.
pub const HEALTH_PATH: &str = "/healthz";

/// How long a client may take over its TLS handshake before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A web configuration file that cannot be used; the message names the key or file.
#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    #[error("cannot read web config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("web config file {path} is not valid: {source}")]
    Syntax {
        path: PathBuf,
        source: serde_norway::Error,
    },
    #[error("web config key `{key}`: {message}")]
    Key { key: String, message: String },
    #[error("web config key `{key}`: cannot read PEM from {what}: {source}")]
    Pem {
        key: String,
        what: String,
        source: rustls::pki_types::pem::Error,
    },
    #[error("web config: the TLS settings are not usable: {0}")]
    Tls(#[from] rustls::Error),
    #[error("web config: the client CA is not usable: {0}")]
    ClientCa(#[from] rustls::server::VerifierBuilderError),
}

impl WebConfigError {
    fn key(key: &str, message: impl Into<String>) -> Self {
        Self::Key {
            key: key.to_owned(),
            message: message.into(),
        }
    }
}

/// The file as written: exporter-toolkit's schema, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebConfigFile {
    #[serde(default)]
    tls_server_config: Option<TlsServerConfigFile>,
    #[serde(default)]
    http_server_config: Option<HttpServerConfigFile>,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, Secret>,
    #[serde(default)]
    rate_limit: Option<serde_norway::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsServerConfigFile {
    cert: Option<String>,
    key: Option<Secret>,
    client_ca: Option<String>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    client_auth_type: Option<String>,
    client_ca_file: Option<PathBuf>,
    #[serde(default)]
    client_allowed_sans: Vec<String>,
    min_version: Option<String>,
    max_version: Option<String>,
    #[serde(default)]
    cipher_suites: Vec<String>,
    /// rustls always picks by its own order of preference; accepted for compatibility.
    #[serde(default)]
    #[allow(dead_code)]
    prefer_server_cipher_suites: Option<bool>,
    #[serde(default)]
    curve_preferences: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpServerConfigFile {
    http2: Option<bool>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

/// The response headers `http_server_config.headers` may set (exporter-toolkit's list).
const ALLOWED_HEADERS: [&str; 5] = [
    "Content-Security-Policy",
    "X-Frame-Options",
    "X-Content-Type-Options",
    "X-XSS-Protection",
    "Strict-Transport-Security",
];

/// How the server asks for client certificates (`client_auth_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificate is asked for.
    None,
    /// A certificate the client sends must chain to the client CA; none is fine too.
    VerifyIfGiven,
    /// The client must send a certificate that chains to the client CA.
    RequireAndVerify,
}

/// A loaded web configuration: the TLS server settings and the basic auth users.
#[derive(Clone)]
pub struct WebConfig {
    /// rustls settings when the file configures a certificate; plain HTTP otherwise.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// How client certificates are checked (for logs).
    pub client_auth: ClientAuth,
    /// User name -> bcrypt hash; empty means no basic auth.
    users: BTreeMap<String, Secret>,
    /// Response headers added to every answer.
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl std::fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebConfig")
            .field("tls", &self.tls.is_some())
            .field("client_auth", &self.client_auth)
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Default for WebConfig {
    /// Plain HTTP, no authentication: what runs without `--web.config.file`.
    fn default() -> Self {
        Self {
            tls: None,
            client_auth: ClientAuth::None,
            users: BTreeMap::new(),
            headers: Vec::new(),
        }
    }
}

impl WebConfig {
    /// Reads and checks the file at `path`; certificates and keys are read now.
    pub fn load(path: &Path) -> Result<Self, WebConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| WebConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Self::from_yaml(&text, dir).map_err(|e| match e {
            WebConfigError::Syntax { source, .. } => WebConfigError::Syntax {
                path: path.to_owned(),
                source,
            },
            other => other,
        })
    }

    /// Parses the file's text; relative paths are taken from `dir`.
    pub fn from_yaml(text: &str, dir: &Path) -> Result<Self, WebConfigError> {
        let file: WebConfigFile = if text.trim().is_empty() {
            WebConfigFile::default()
        } else {
            serde_norway::from_str(text).map_err(|source| WebConfigError::Syntax {
                path: PathBuf::new(),
                source,
            })?
        };
        if file.rate_limit.is_some() {
            return Err(WebConfigError::key(
                "rate_limit",
                "not supported by dmsguard; put a reverse proxy in front to rate-limit",
            ));
        }
        for (user, hash) in &file.basic_auth_users {
            // bcrypt hashes are `$2a$`, `$2b$` or `$2y$`, a two-digit cost, then 53 characters.
            let h = hash.expose();
            if !(h.starts_with("$2") && h.len() == 60) {
                return Err(WebConfigError::key(
                    &format!("basic_auth_users.{user}"),
                    "is not a bcrypt hash (make one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'`)",
                ));
            }
        }
        let mut headers = Vec::new();
        let mut http2 = true;
        if let Some(http) = &file.http_server_config {
            http2 = http.http2.unwrap_or(true);
            for (name, value) in &http.headers {
                let key = format!("http_server_config.headers.{name}");
                if !ALLOWED_HEADERS
                    .iter()
                    .any(|allowed| allowed.eq_ignore_ascii_case(name))
                {
                    return Err(WebConfigError::key(
                        &key,
                        format!("not a header that may be set (one of {ALLOWED_HEADERS:?})"),
                    ));
                }
                if value.is_empty() {
                    continue;
                }
                let name = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|e| WebConfigError::key(&key, e.to_string()))?;
                let value = HeaderValue::from_str(value)
                    .map_err(|e| WebConfigError::key(&key, e.to_string()))?;
                headers.push((name, value));
            }
        }
        let (tls, client_auth) = match &file.tls_server_config {
            Some(tls) => tls_server_config(tls, dir, http2)?,
            None => (None, ClientAuth::None),
        };
        Ok(Self {
            tls,
            client_auth,
            users: file.basic_auth_users,
            headers,
        })
    }

    /// Whether requests need a basic auth user.
    pub fn basic_auth(&self) -> bool {
        !self.users.is_empty()
    }

    /// `https` with TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

/// PEM text inline or from a file, exactly one of the two.
fn pem_source<'a>(
    inline: Option<&'a str>,
    file: Option<&'a Path>,
    dir: &Path,
    inline_key: &str,
    file_key: &str,
) -> Result<Option<PemSource>, WebConfigError> {
    match (inline.filter(|s| !s.is_empty()), file) {
        (Some(_), Some(_)) => Err(WebConfigError::key(
            file_key,
            format!("set `{inline_key}` or `{file_key}`, not both"),
        )),
        (Some(text), None) => Ok(Some(PemSource::Inline(text.to_owned()))),
        (None, Some(path)) if !path.as_os_str().is_empty() => {
            Ok(Some(PemSource::File(dir.join(path))))
        }
        _ => Ok(None),
    }
}

enum PemSource {
    Inline(String),
    File(PathBuf),
}

impl PemSource {
    fn describe(&self, key: &str) -> String {
        match self {
            PemSource::Inline(_) => format!("the inline `{key}`"),
            PemSource::File(path) => path.display().to_string(),
        }
    }

    fn certificates(&self, key: &str) -> Result<Vec<CertificateDer<'static>>, WebConfigError> {
        let pem_error = |source| WebConfigError::Pem {
            key: key.to_owned(),
            what: self.describe(key),
            source,
        };
        let certs: Vec<CertificateDer<'static>> = match self {
            PemSource::Inline(text) => CertificateDer::pem_slice_iter(text.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(pem_error)?,
            PemSource::File(path) => CertificateDer::pem_file_iter(path)
                .map_err(pem_error)?
                .collect::<Result<_, _>>()
                .map_err(pem_error)?,
        };
        if certs.is_empty() {
            return Err(WebConfigError::key(
                key,
                format!("{} holds no CERTIFICATE block", self.describe(key)),
            ));
        }
        Ok(certs)
    }

    fn private_key(&self, key: &str) -> Result<PrivateKeyDer<'static>, WebConfigError> {
        let pem_error = |source| WebConfigError::Pem {
            key: key.to_owned(),
            what: self.describe(key),
            source,
        };
        match self {
            PemSource::Inline(text) => PrivateKeyDer::from_pem_slice(text.as_bytes()),
            PemSource::File(path) => PrivateKeyDer::from_pem_file(path),
        }
        .map_err(pem_error)
    }
}

fn tls_version(
    key: &str,
    value: &str,
) -> Result<&'static rustls::SupportedProtocolVersion, WebConfigError> {
    match value {
        "TLS12" => Ok(&rustls::version::TLS12),
        "TLS13" => Ok(&rustls::version::TLS13),
        "TLS10" | "TLS11" => Err(WebConfigError::key(
            key,
            format!("{value} is not supported (rustls speaks TLS12 and TLS13 only)"),
        )),
        other => Err(WebConfigError::key(
            key,
            format!("unknown TLS version `{other}` (TLS12 or TLS13)"),
        )),
    }
}

fn tls_server_config(
    file: &TlsServerConfigFile,
    dir: &Path,
    http2: bool,
) -> Result<(Option<Arc<rustls::ServerConfig>>, ClientAuth), WebConfigError> {
    const P: &str = "tls_server_config";
    let cert = pem_source(
        file.cert.as_deref(),
        file.cert_file.as_deref(),
        dir,
        &format!("{P}.cert"),
        &format!("{P}.cert_file"),
    )?;
    let key = pem_source(
        file.key.as_ref().map(Secret::expose),
        file.key_file.as_deref(),
        dir,
        &format!("{P}.key"),
        &format!("{P}.key_file"),
    )?;
    let client_ca = pem_source(
        file.client_ca.as_deref(),
        file.client_ca_file.as_deref(),
        dir,
        &format!("{P}.client_ca"),
        &format!("{P}.client_ca_file"),
    )?;
    for (key, values) in [
        ("cipher_suites", &file.cipher_suites),
        ("curve_preferences", &file.curve_preferences),
        ("client_allowed_sans", &file.client_allowed_sans),
    ] {
        if !values.is_empty() {
            return Err(WebConfigError::key(
                &format!("{P}.{key}"),
                "not supported by dmsguard (rustls chooses from its own safe defaults)",
            ));
        }
    }
    let client_auth = match file.client_auth_type.as_deref().unwrap_or("") {
        "" | "NoClientCert" => ClientAuth::None,
        "VerifyClientCertIfGiven" => ClientAuth::VerifyIfGiven,
        "RequireAndVerifyClientCert" => ClientAuth::RequireAndVerify,
        other @ ("RequestClientCert" | "RequireAnyClientCert" | "RequireClientCert") => {
            return Err(WebConfigError::key(
                &format!("{P}.client_auth_type"),
                format!(
                    "{other} accepts certificates nobody verified; use RequireAndVerifyClientCert"
                ),
            ))
        }
        other => {
            return Err(WebConfigError::key(
                &format!("{P}.client_auth_type"),
                format!("unknown `{other}` (NoClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert)"),
            ))
        }
    };
    let (cert, key) = match (cert, key) {
        (None, None) if client_ca.is_none() && client_auth == ClientAuth::None => {
            // exporter-toolkit serves plain HTTP when no certificate is configured.
            return Ok((None, ClientAuth::None));
        }
        (Some(cert), Some(key)) => (cert, key),
        (None, _) => {
            return Err(WebConfigError::key(
                &format!("{P}.cert_file"),
                "missing (a certificate and a key are needed for TLS)",
            ))
        }
        (Some(_), None) => {
            return Err(WebConfigError::key(
                &format!("{P}.key_file"),
                "missing (a certificate and a key are needed for TLS)",
            ))
        }
    };

    let min = tls_version(
        &format!("{P}.min_version"),
        file.min_version.as_deref().unwrap_or("TLS12"),
    )?;
    let max = tls_version(
        &format!("{P}.max_version"),
        file.max_version.as_deref().unwrap_or("TLS13"),
    )?;
    let versions: Vec<&'static rustls::SupportedProtocolVersion> =
        [&rustls::version::TLS12, &rustls::version::TLS13]
            .into_iter()
            .filter(|v| {
                u16::from(v.version) >= u16::from(min.version)
                    && u16::from(v.version) <= u16::from(max.version)
            })
            .collect();
    if versions.is_empty() {
        return Err(WebConfigError::key(
            &format!("{P}.min_version"),
            "is above max_version",
        ));
    }
    let chain = cert.certificates(&format!("{P}.cert_file"))?;
    let private_key = key.private_key(&format!("{P}.key_file"))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)?;
    let builder = match (client_auth, client_ca) {
        (ClientAuth::None, Some(_)) => {
            // As exporter-toolkit: a CA without a policy is a mistake, not a silent no-op.
            return Err(WebConfigError::key(
                &format!("{P}.client_auth_type"),
                "client_ca_file is set but client_auth_type is not: set it to RequireAndVerifyClientCert",
            ));
        }
        (ClientAuth::None, None) => builder.with_no_client_auth(),
        (_, None) => {
            return Err(WebConfigError::key(
                &format!("{P}.client_ca_file"),
                "missing: client certificates are verified against it",
            ))
        }
        (auth, Some(ca)) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in ca.certificates(&format!("{P}.client_ca_file"))? {
                roots.add(cert)?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            let verifier = if auth == ClientAuth::VerifyIfGiven {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(verifier.build()?)
        }
    };
    let mut config = builder.with_single_cert(chain, private_key)?;
    // HTTP/1.1 only: `http_server_config.http2` is accepted, and Prometheus, Alertmanager
    // and kubelet probes all speak HTTP/1.1.
    let _ = http2;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((Some(Arc::new(config)), client_auth))
}

/// The web configuration in force, replaced on reload. A listener started with TLS keeps TLS
/// (new certificates and users apply to the next connection and request); turning TLS on or
/// off needs a restart.
#[derive(Clone)]
pub struct WebHandle {
    inner: Arc<HandleInner>,
}

struct HandleInner {
    current: RwLock<Arc<WebConfig>>,
    /// Paths that take the binary's own bearer token instead of a basic auth user.
    bearer_paths: Vec<&'static str>,
    /// `user:hash:password` triples bcrypt already verified (bcrypt is slow on purpose, and
    /// exporter-toolkit caches the same way); cleared when the configuration changes.
    verified: Mutex<HashSet<String>>,
}

/// Set on a request a basic auth user authenticated; handlers that accept either a user or
/// their bearer token look for it.
#[derive(Debug, Clone)]
pub struct AuthenticatedUser(pub String);

impl WebHandle {
    /// `bearer_paths` are the paths whose handlers check a bearer token of their own: a
    /// request there with `Authorization: Bearer …` passes to the handler untouched.
    pub fn new(config: WebConfig, bearer_paths: &[&'static str]) -> Self {
        Self {
            inner: Arc::new(HandleInner {
                current: RwLock::new(Arc::new(config)),
                bearer_paths: bearer_paths.to_vec(),
                verified: Mutex::new(HashSet::new()),
            }),
        }
    }

    /// The configuration in force.
    pub fn current(&self) -> Arc<WebConfig> {
        self.inner
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the configuration; refused when it would turn TLS on or off.
    pub fn replace(&self, config: WebConfig) -> Result<(), WebConfigError> {
        let mut current = self
            .inner
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if current.tls.is_some() != config.tls.is_some() {
            return Err(WebConfigError::key(
                "tls_server_config",
                "turning TLS on or off needs a restart",
            ));
        }
        *current = Arc::new(config);
        self.inner
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        Ok(())
    }

    /// Whether `user`/`password` match a configured user's bcrypt hash.
    async fn check(&self, config: &WebConfig, user: &str, password: &str) -> bool {
        // Unknown users are checked against a hash all the same, so timing does not say which
        // user names exist.
        const DUMMY: &str = "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/M4IfZvcwLNzVKyW";
        let (hash, known) = match config.users.get(user) {
            Some(hash) => (hash.expose().to_owned(), true),
            None => (DUMMY.to_owned(), false),
        };
        let key = format!("{user}:{hash}:{password}");
        if known
            && self
                .inner
                .verified
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&key)
        {
            return true;
        }
        let password = password.to_owned();
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(false)
            && known;
        if ok {
            self.inner
                .verified
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key);
        }
        ok
    }
}

/// `Authorization: Basic …` decoded into user and password.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn is_bearer(headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
}

/// The middleware in front of every route: basic auth when users are configured, and the
/// configured response headers.
async fn guard(State(web): State<WebHandle>, mut request: Request, next: Next) -> Response {
    let config = web.current();
    let path = request.uri().path();
    let open = !config.basic_auth()
        || path == HEALTH_PATH
        || (web.inner.bearer_paths.contains(&path) && is_bearer(request.headers()));
    let mut response = if open {
        next.run(request).await
    } else {
        match basic_credentials(request.headers()) {
            Some((user, password)) if web.check(&config, &user, &password).await => {
                request.extensions_mut().insert(AuthenticatedUser(user));
                next.run(request).await
            }
            credentials => {
                tracing::warn!(
                    path = %request.uri().path(),
                    user = credentials.as_ref().map_or("", |(u, _)| u.as_str()),
                    "Request refused: missing or wrong basic auth credentials."
                );
                let mut response = (StatusCode::UNAUTHORIZED, "Unauthorized\n").into_response();
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"dmsguard\""),
                );
                response
            }
        }
    };
    for (name, value) in &config.headers {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    response
}

/// A TCP listener whose connections are TLS: handshakes run in their own tasks (a slow client
/// holds up nobody), and each uses the certificate in force when it started.
struct TlsListener {
    incoming: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    addr: SocketAddr,
    acceptor: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    fn start(listener: TcpListener, web: WebHandle) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let (tx, incoming) = mpsc::channel(64);
        let acceptor = tokio::spawn(async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of descriptors and the like: wait a little, as axum does.
                        tracing::warn!(%error, "Accepting a connection failed.");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Some(config) = web.current().tls.clone() else {
                    continue;
                };
                let tx = tx.clone();
                tokio::spawn(async move {
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(error)) => {
                            tracing::info!(%peer, %error, "TLS handshake failed.");
                        }
                        Err(_) => {
                            tracing::info!(%peer, "TLS handshake timed out.");
                        }
                    }
                });
            }
        });
        Ok(Self {
            incoming,
            addr,
            acceptor,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.incoming.recv().await {
            Some(connection) => connection,
            // The acceptor task never ends on its own while the listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

/// Serves `router` on `listener` with the web configuration of `web` (TLS, basic auth,
/// headers) until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    web: WebHandle,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let tls = web.current().tls.is_some();
    let router = router.layer(axum::middleware::from_fn_with_state(web.clone(), guard));
    if tls {
        let listener = TlsListener::start(listener, web)?;
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
    } else {
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_plain_http_without_auth() {
        let web = WebConfig::from_yaml("", Path::new(".")).unwrap();
        assert!(web.tls.is_none());
        assert!(!web.basic_auth());
    }

    #[test]
    fn unknown_keys_and_unsupported_settings_are_refused_by_name() {
        let cases = [
            ("tls_server_config:\n  certfile: x\n", "certfile"),
            ("rate_limit:\n  interval: 1s\n  burst: 2\n", "rate_limit"),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAnyClientCert\n",
                "client_auth_type",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS10\n",
                "min_version",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [TLS_AES_128_GCM_SHA256]\n",
                "cipher_suites",
            ),
            ("tls_server_config:\n  cert_file: a\n", "key_file"),
            ("basic_auth_users:\n  alice: plaintext\n", "basic_auth_users.alice"),
            (
                "http_server_config:\n  headers:\n    X-Powered-By: me\n",
                "X-Powered-By",
            ),
        ];
        for (yaml, key) in cases {
            let error = WebConfig::from_yaml(yaml, Path::new("/nonexistent"))
                .expect_err(yaml)
                .to_string();
            assert!(error.contains(key), "{yaml}: {error}");
        }
    }

    #[test]
    fn basic_credentials_are_decoded() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic YWxpY2U6czNjcjp0"),
        );
        assert_eq!(
            basic_credentials(&headers),
            Some(("alice".into(), "s3cr:t".into()))
        );
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert_eq!(basic_credentials(&headers), None);
        assert!(is_bearer(&headers));
    }

    #[tokio::test]
    async fn bcrypt_users_are_checked_and_cached() {
        let hash = bcrypt::hash("right", 4).unwrap();
        let yaml = format!("basic_auth_users:\n  alice: '{hash}'\n");
        let config = WebConfig::from_yaml(&yaml, Path::new(".")).unwrap();
        let handle = WebHandle::new(config.clone(), &[]);
        assert!(handle.check(&config, "alice", "right").await);
        assert!(handle.check(&config, "alice", "right").await, "cached");
        assert!(!handle.check(&config, "alice", "wrong").await);
        assert!(!handle.check(&config, "bob", "right").await);
    }
}
