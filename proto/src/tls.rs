//! Transport security shared by the node and anygatectl: mutual TLS under one
//! cluster CA, the caller's role carried in its certificate, and material
//! that is re-read from disk without a restart.
//!
//! A certificate names its holder in the subject's common name (the audit
//! actor) and its role in the organizational unit: `node`, `admin`,
//! `operator` or `viewer` (see [`Role`]). `anygatectl pki` issues them.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// What a certificate allows, least to most. A node is everything an admin
/// is, plus the node-to-node services (Raft, write forwarding, endpoint
/// reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads, without secrets.
    Viewer,
    /// Reads, peers, pools, drain/undrain.
    Operator,
    /// Everything an operator can, plus settings, membership, secrets,
    /// backup and restore.
    Admin,
    /// Another gateway of the cluster.
    Node,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Operator, Role::Admin, Role::Node];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
            Role::Node => "node",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who is on the other end of a connection, from its verified certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub role: Role,
    /// Unix seconds.
    pub not_after: i64,
    /// The certificate's serial number, lowercase hex (what a revocation
    /// names).
    pub serial: String,
    /// Its subject alternative names: DNS names and IP addresses as text.
    pub sans: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {msg}")]
    File { path: String, msg: String },
    #[error("TLS configuration: {0}")]
    Config(String),
    #[error("certificate: {0}")]
    Cert(String),
}

fn file_err(p: &Path, msg: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: p.display().to_string(),
        msg: msg.to_string(),
    }
}

/// Reads the holder and role out of a (DER) certificate.
pub fn identity_of(der: &[u8]) -> Result<Identity, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| TlsError::Cert(format!("cannot parse: {e}")))?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| TlsError::Cert("no common name (the holder's name)".into()))?
        .to_string();
    let ou = subject
        .iter_organizational_unit()
        .next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or("");
    let role = Role::parse(ou).ok_or_else(|| {
        TlsError::Cert(format!(
            "organizational unit {ou:?} is not a role (node, admin, operator, viewer)"
        ))
    })?;
    let serial = cert
        .tbs_certificate
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for n in &ext.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => sans.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        _ => None,
                    };
                    sans.extend(ip.map(|i| i.to_string()));
                }
                _ => {}
            }
        }
    }
    Ok(Identity {
        name,
        role,
        not_after: cert.validity().not_after.timestamp(),
        serial,
        sans,
    })
}

/// Where the PEM files are: the CA bundle to trust (several CAs during a
/// CA rotation), this holder's certificate chain and its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Loaded material, and the two rustls configurations built from it.
struct Built {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    identity: Identity,
    stamp: Vec<Option<SystemTime>>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// A PEM certificate chain (at least one certificate) and its private key.
fn cert_and_key(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_err(cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(cert, e))?;
    if chain.is_empty() {
        return Err(file_err(cert, "no certificate in the file"));
    }
    let k = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, e))?;
    Ok((chain, k))
}

/// A server configuration that asks for no client certificate (the
/// enrollment portal, which people open in a browser): the same protocol
/// versions and crypto provider as the mutual-TLS one.
pub fn server_without_client_auth(cert: &Path, key: &Path) -> Result<ServerConfig, TlsError> {
    let (chain, k) = cert_and_key(cert, key)?;
    ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, k)
        .map_err(|e| file_err(key, format!("does not match the certificate: {e}")))
}

fn build(paths: &Paths) -> Result<Built, TlsError> {
    let stamp = stamp(paths);
    let roots_der: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&paths.ca)
        .map_err(|e| file_err(&paths.ca, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(&paths.ca, e))?;
    if roots_der.is_empty() {
        return Err(file_err(&paths.ca, "no certificate in the CA bundle"));
    }
    let mut roots = RootCertStore::empty();
    for c in roots_der {
        roots
            .add(c)
            .map_err(|e| file_err(&paths.ca, format!("not a usable CA certificate: {e}")))?;
    }
    let roots = Arc::new(roots);
    let (chain, key) = cert_and_key(&paths.cert, &paths.key)?;
    let identity = identity_of(&chain[0]).map_err(|e| file_err(&paths.cert, e))?;
    let versions = VERSIONS;
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| file_err(&paths.key, format!("does not match the certificate: {e}")))?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    let mut client = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| file_err(&paths.key, format!("does not match the certificate: {e}")))?;
    client.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Built {
        server: Arc::new(server),
        client: Arc::new(client),
        identity,
        stamp,
    })
}

fn stamp(paths: &Paths) -> Vec<Option<SystemTime>> {
    [&paths.ca, &paths.cert, &paths.key]
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

/// Mutual-TLS material that can be re-read while connections are open:
/// new connections use the new material, established ones keep theirs.
pub struct Tls {
    paths: Paths,
    built: RwLock<Built>,
    reloading: Mutex<()>,
}

impl Tls {
    pub fn load(paths: Paths) -> Result<Arc<Tls>, TlsError> {
        let built = build(&paths)?;
        Ok(Arc::new(Tls {
            paths,
            built: RwLock::new(built),
            reloading: Mutex::new(()),
        }))
    }

    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    pub fn server(&self) -> Arc<ServerConfig> {
        self.built.read().expect("tls lock").server.clone()
    }

    pub fn client(&self) -> Arc<ClientConfig> {
        self.built.read().expect("tls lock").client.clone()
    }

    /// This holder's own identity (from its certificate).
    pub fn identity(&self) -> Identity {
        self.built.read().expect("tls lock").identity.clone()
    }

    /// Re-reads the files if any changed since the last load (or always,
    /// with `force`). Ok(Some(identity)) when new material is in use; on an
    /// error the material in use stays.
    pub fn reload(&self, force: bool) -> Result<Option<Identity>, TlsError> {
        let _one = self.reloading.lock().expect("tls reload lock");
        if !force && stamp(&self.paths) == self.built.read().expect("tls lock").stamp {
            return Ok(None);
        }
        let b = build(&self.paths)?;
        let id = b.identity.clone();
        *self.built.write().expect("tls lock") = b;
        Ok(Some(id))
    }
}

/// What the server knows about a connection; tonic puts it into every
/// request's extensions.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: Option<SocketAddr>,
    /// None on a plaintext (`--insecure-dev`) connection.
    pub identity: Option<Identity>,
}

/// A server-side connection: TLS, or plaintext in insecure dev mode.
pub enum Conn {
    Plain(TcpStream, Option<SocketAddr>, Slot),
    Tls(
        Box<tokio_rustls::server::TlsStream<TcpStream>>,
        ConnInfo,
        Slot,
    ),
}

/// Bounds on what an unauthenticated client can hold: connections in all,
/// connections per source address, TLS handshakes in progress.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub connections: usize,
    pub per_source: usize,
    pub handshakes: usize,
}

impl Limits {
    /// Connections in all: the process's file descriptor limit less a
    /// reserve for the database, netlink, children and outgoing channels.
    pub fn for_this_process() -> Limits {
        Limits {
            connections: nofile_soft().saturating_sub(CONNECTION_FD_RESERVE).max(64),
            per_source: 64,
            handshakes: 256,
        }
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (a server should use
/// what the administrator allows; systemd's default soft limit is 1024).
pub fn raise_nofile() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let r = getrlimit(Resource::Nofile);
    if r.current < r.maximum {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: r.maximum,
                maximum: r.maximum,
            },
        );
    }
}

/// File descriptors kept free of client connections.
pub const CONNECTION_FD_RESERVE: usize = 512;

/// The soft RLIMIT_NOFILE (unlimited: usize::MAX).
pub fn nofile_soft() -> usize {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX))
}

#[derive(Default)]
struct Counts {
    total: usize,
    by_source: std::collections::HashMap<std::net::IpAddr, usize>,
}

/// A connection's place in the [`Limits`]; given back when it drops.
pub struct Slot {
    counts: Arc<Mutex<Counts>>,
    source: std::net::IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().expect("connection counts poisoned");
        c.total -= 1;
        if let Some(n) = c.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                c.by_source.remove(&self.source);
            }
        }
    }
}

/// Takes a slot for a connection from `source`, or says which limit is full.
fn take_slot(
    counts: &Arc<Mutex<Counts>>,
    limits: &Limits,
    source: std::net::IpAddr,
) -> Result<Slot, &'static str> {
    let mut c = counts.lock().expect("connection counts poisoned");
    if c.total >= limits.connections {
        return Err("connection limit reached");
    }
    let n = c.by_source.entry(source).or_default();
    if *n >= limits.per_source {
        return Err("per-source connection limit reached");
    }
    *n += 1;
    c.total += 1;
    Ok(Slot {
        counts: counts.clone(),
        source,
    })
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        match self {
            Conn::Plain(_, remote, _) => ConnInfo {
                remote: *remote,
                identity: None,
            },
            Conn::Tls(_, info, _) => info.clone(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s, ..) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s, ..) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s, ..) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s, ..) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s, ..) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s, ..) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s, ..) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s, ..) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s, ..) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s, ..) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s, ..) => s.is_write_vectored(),
            Conn::Tls(s, ..) => s.is_write_vectored(),
        }
    }
}

/// A TLS handshake must finish within this; a silent socket is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections on `listener` and, with `tls`, completes the mutual
/// TLS handshake (each in its own task, so a slow client holds up nobody).
/// A refused handshake is logged and reported to `refused` with the reason;
/// only verified connections reach the gRPC server.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    limits: Limits,
    refused: impl Fn(&str) + Send + Sync + 'static,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<Conn>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Conn>>(64);
    let refused = Arc::new(refused);
    let counts: Arc<Mutex<Counts>> = Default::default();
    let handshakes = Arc::new(tokio::sync::Semaphore::new(limits.handshakes));
    tokio::spawn(async move {
        loop {
            let (sock, remote) = tokio::select! {
                _ = tx.closed() => return,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            // Over a limit: closed at once, before any TLS work, so no
            // client can hold the file descriptors Raft and the API need.
            let slot = match take_slot(&counts, &limits, remote.ip()) {
                Ok(slot) => slot,
                Err(why) => {
                    tracing::debug!(%remote, why, "connection refused");
                    refused(why);
                    continue;
                }
            };
            let _ = sock.set_nodelay(true);
            let Some(tls) = &tls else {
                if tx
                    .send(Ok(Conn::Plain(sock, Some(remote), slot)))
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            };
            let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                refused("too many TLS handshakes in progress");
                continue;
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.server());
            let (tx, refused) = (tx.clone(), refused.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let res = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await;
                let stream = match res {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::info!(%remote, error = %e, "TLS handshake refused");
                        refused(&e.to_string());
                        return;
                    }
                    Err(_) => {
                        tracing::info!(%remote, "TLS handshake timed out");
                        refused("handshake timed out");
                        return;
                    }
                };
                let identity = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| identity_of(c));
                let identity = match identity {
                    Some(Ok(id)) => id,
                    Some(Err(e)) => {
                        tracing::info!(%remote, error = %e, "client certificate names no role");
                        refused(&e.to_string());
                        return;
                    }
                    None => {
                        refused("no client certificate");
                        return;
                    }
                };
                let info = ConnInfo {
                    remote: Some(remote),
                    identity: Some(identity),
                };
                drop(_permit);
                let _ = tx.send(Ok(Conn::Tls(Box::new(stream), info, slot))).await;
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// `host:port` of an address that may carry an http(s) scheme.
fn without_scheme(addr: &str) -> &str {
    addr.strip_prefix("http://")
        .or_else(|| addr.strip_prefix("https://"))
        .unwrap_or(addr)
}

/// An address that is not `host:port`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("endpoint {addr:?} is not host:port: {why}")]
pub struct AddressError {
    pub addr: String,
    pub why: String,
}

/// Why a TLS probe of a node failed, in words for the certificate's holder.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Address(#[from] AddressError),
    #[error("connect timed out")]
    Timeout,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The node's TLS alert, explained.
    #[error("{0}")]
    Refused(String),
}

/// A lazily connected gRPC channel to `addr` (host:port): mutual TLS with
/// the material current at each (re)connect, or plaintext without `tls`.
/// The server's certificate must name the host (IP or DNS) of `addr`.
pub fn channel(
    addr: &str,
    tls: Option<Arc<Tls>>,
    connect_timeout: Duration,
) -> Result<tonic::transport::Channel, AddressError> {
    let bare = without_scheme(addr);
    let ep = tonic::transport::Endpoint::from_shared(format!("http://{bare}"))
        .map_err(|e| AddressError {
            addr: addr.to_string(),
            why: e.to_string(),
        })?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5));
    let Some(tls) = tls else {
        return Ok(ep.connect_lazy());
    };
    let connector = tower::service_fn(move |uri: http::Uri| {
        let tls = tls.clone();
        async move {
            let host = uri.host().unwrap_or_default();
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(443);
            let name = ServerName::try_from(host.clone()).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("{host:?} is not a server name: {e}"),
                )
            })?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let s = tokio_rustls::TlsConnector::from(tls.client())
                .connect(name, tcp)
                .await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
        }
    });
    Ok(ep.connect_with_connector_lazy(connector))
}

/// Connects to `addr` and completes a TLS handshake, then waits briefly for
/// the server's verdict on our certificate (TLS 1.3 sends it after the
/// handshake): the reason a node refuses us, in words, for error messages.
pub async fn probe(addr: &str, tls: &Tls) -> Result<(), ProbeError> {
    let bare = without_scheme(addr);
    let bad = |why: &str| AddressError {
        addr: addr.to_string(),
        why: why.to_string(),
    };
    let (host, _) = bare.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let name = ServerName::try_from(host).map_err(|e| bad(&e.to_string()))?;
    let tcp = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(bare))
        .await
        .map_err(|_| ProbeError::Timeout)??;
    let mut s = tokio_rustls::TlsConnector::from(tls.client())
        .connect(name, tcp)
        .await?;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An HTTP/2 preface makes the server answer (or alert) at once.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
    let mut b = [0u8; 1];
    match tokio::time::timeout(Duration::from_millis(500), s.read(&mut b)).await {
        Ok(Err(e)) => Err(ProbeError::Refused(explain_alert(&e.to_string()))),
        _ => Ok(()),
    }
}

/// What the node's TLS alert means for the person holding the certificate.
fn explain_alert(e: &str) -> String {
    let why = if e.contains("CertificateExpired") {
        "your certificate has expired (or is not valid yet)"
    } else if e.contains("DecryptError") || e.contains("UnknownCA") || e.contains("BadCertificate")
    {
        "the node does not trust your certificate (issued by another CA?)"
    } else if e.contains("CertificateRequired") {
        "the node requires a client certificate"
    } else {
        return e.to_string();
    };
    format!("{why} [{e}]")
}
