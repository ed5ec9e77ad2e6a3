//! The user portal, served by every gateway on its own HTTPS listener:
//! people sign in at the company's identity provider (OpenID Connect code
//! flow with PKCE, `oidc.rs`) and enroll their own devices. The key pair is
//! made on the user's side (the page's WebCrypto X25519, or the CLI); the
//! portal sees only the public key.
//!
//! Nothing about a sign-in lives on one gateway: the pending sign-in and
//! the session are cookies encrypted and authenticated with a key in the
//! replicated inventory (`InitPortalKey`, set once by the first portal),
//! so any gateway — the one the router sends the browser to after a
//! failure — honours them. Every change is a replicated write with the
//! identity provider's subject as its actor, so it is in the audit log.

mod oidc;
mod pages;

use crate::config::PortalConfig;
use crate::metrics::{Metrics, ReasonLabels};
use crate::model::idp::{self, Grant};
use crate::model::{Command, NewPeer, Request, Response, WgKey};
use crate::raft::RaftNode;
use crate::time::now_ms;
use axum::extract::{FromRef, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response as HttpResponse};
use axum::routing::{get, post};
use axum::{Json, Router};
use axum_extra::extract::cookie::{Cookie, Key, PrivateCookieJar, SameSite};
pub use oidc::Identity;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

const LOGIN_COOKIE: &str = "anygate_login";
const SESSION_COOKIE: &str = "anygate_session";
/// A sign-in must come back from the provider within this.
const LOGIN_WINDOW_MS: i64 = 10 * 60 * 1000;
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Device names: what a person types, bounded.
const DEVICE_NAME_MAX: usize = 64;

/// A signed-in person (the session cookie's content).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Session {
    pub id: Identity,
    /// Sent back with every change (header `x-csrf-token`).
    pub csrf: String,
    pub expires_ms: i64,
}

/// The pending sign-in cookie's content.
#[derive(Serialize, Deserialize)]
struct Login {
    pending: oidc::Pending,
    expires_ms: i64,
}

#[derive(Clone)]
struct Portal {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: PortalConfig,
    oidc: oidc::Provider,
    node: RaftNode,
    metrics: Metrics,
    key: Key,
}

impl FromRef<Portal> for Key {
    fn from_ref(p: &Portal) -> Key {
        p.inner.key.clone()
    }
}

/// What the portal needs before it can serve, checked at start (a bad
/// certificate is a configuration error, not a task that dies later).
pub struct Prepared {
    cfg: PortalConfig,
    tls: tokio_rustls::TlsAcceptor,
    oidc: oidc::Provider,
}

#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error(transparent)]
    Tls(#[from] anygate_proto::tls::TlsError),
    #[error(transparent)]
    Oidc(#[from] oidc::OidcError),
}

pub fn prepare(cfg: PortalConfig) -> Result<Prepared, PrepareError> {
    let tls = tls_acceptor(&cfg)?;
    let oidc = oidc::Provider::new(cfg.clone())?;
    Ok(Prepared { cfg, tls, oidc })
}

/// Serve the portal until `stop`. The cookie key comes from the
/// replicated inventory (proposed here when no portal set one yet), so the
/// portal starts serving once the cluster can commit.
pub async fn serve(
    prepared: Prepared,
    listener: TcpListener,
    node: RaftNode,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let Prepared { cfg, tls, oidc } = prepared;
    let key = tokio::select! {
        k = cookie_key(&node) => k,
        _ = stop.cancelled() => return,
    };
    let portal = Portal {
        inner: Arc::new(Inner {
            cfg,
            oidc,
            node,
            metrics,
            key,
        }),
    };
    info!(listen = %portal.inner.cfg.listen, url = %portal.inner.cfg.url, "portal serving");
    let app = router(portal);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "portal: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let (tls, app, stop) = (tls.clone(), app.clone(), stop.clone());
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(Duration::from_secs(10), tls.accept(tcp)).await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "portal: TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let svc = hyper_util::service::TowerToHyperService::new(app);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "portal: connection ended");
                },
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
        });
    }
}

/// How long a portal write waits for the cluster to elect a leader
/// (elections take about a second; a person waits a few).
const WRITE_PATIENCE: Duration = Duration::from_secs(6);

fn tls_acceptor(cfg: &PortalConfig) -> Result<tokio_rustls::TlsAcceptor, PrepareError> {
    let mut server = anygate_proto::tls::server_without_client_auth(&cfg.cert, &cfg.key)?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
}

/// The replicated cookie key; proposes one when there is none yet, and
/// retries (no leader yet, a partition) until it is there.
async fn cookie_key(node: &RaftNode) -> Key {
    let mut wait = Duration::from_millis(100);
    loop {
        if let Some(k) = node.view.read(|inv| inv.portal_key().map(Key::from)) {
            return k;
        }
        let mut bytes = vec![0u8; crate::model::PORTAL_KEY_BYTES];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
        let req = Request {
            actor: format!("node {}", node.id),
            at_ms: now_ms(),
            request_id: None,
            cmd: Command::InitPortalKey(bytes),
        };
        match node.write(req).await {
            Ok(w) => {
                let _ = node
                    .wait_applied(w.index, crate::raft::CLIENT_TIMEOUT)
                    .await;
            }
            Err(e) => {
                info!(error = %e, "portal: waiting for the cluster to store its cookie key");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
        }
    }
}

fn router(p: Portal) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/portal") }))
        .route("/portal", get(home))
        .route("/portal/login", get(login))
        .route("/portal/callback", get(callback))
        .route("/portal/logout", post(logout))
        .route("/portal/devices", get(list_devices).post(enroll))
        .route("/portal/devices/remove", post(remove_device))
        .route("/portal/portal.js", get(script))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(p)
}

/// Every answer: no framing, no sniffing, nothing cached, scripts and
/// styles only from the portal itself.
async fn security_headers(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> HttpResponse {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    for (k, v) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
        (header::STRICT_TRANSPORT_SECURITY, "max-age=31536000"),
    ] {
        h.insert(k, header::HeaderValue::from_static(v));
    }
    r
}

/// A refusal a person can read: a page for a browser, JSON for a script.
#[derive(Debug)]
pub struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
}

fn refuse(status: StatusCode, code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        code,
        message: message.into(),
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> HttpResponse {
        (
            self.status,
            Json(serde_json::json!({"code": self.code, "message": self.message})),
        )
            .into_response()
    }
}

fn page_refusal(r: Refusal) -> HttpResponse {
    (r.status, pages::refused(&r.message)).into_response()
}

fn cookie(
    name: &'static str,
    value: String,
    path: &'static str,
    max_age_ms: i64,
) -> Cookie<'static> {
    Cookie::build((name, value))
        .path(path)
        .http_only(true)
        .secure(true)
        // Lax: the provider's redirect back is a top-level navigation
        // from another site, and must carry the pending sign-in.
        .same_site(SameSite::Lax)
        .max_age(time::Duration::milliseconds(max_age_ms))
        .build()
}

fn session(jar: &PrivateCookieJar) -> Option<Session> {
    let c = jar.get(SESSION_COOKIE)?;
    let s: Session = serde_json::from_str(c.value()).ok()?;
    (s.expires_ms > now_ms()).then_some(s)
}

/// The session of a change request: signed in, and the CSRF token it was
/// given sent back in the header.
fn session_for_change(jar: &PrivateCookieJar, headers: &HeaderMap) -> Result<Session, Refusal> {
    let s = session(jar).ok_or_else(signed_out)?;
    let sent = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !constant_time_eq(sent.as_bytes(), s.csrf.as_bytes()) {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "csrf",
            "the request did not carry this sign-in's CSRF token; reload the page",
        ));
    }
    Ok(s)
}

fn signed_out() -> Refusal {
    refuse(
        StatusCode::UNAUTHORIZED,
        "signed_out",
        "you are not signed in (or your sign-in expired): sign in again",
    )
}

/// A JSON body of the expected shape (described in `shape` for the refusal).
fn json_body<T>(
    body: Result<Json<T>, axum::extract::rejection::JsonRejection>,
    shape: &str,
) -> Result<T, Refusal> {
    body.map(|Json(t)| t).map_err(|e| {
        refuse(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("the request is not {shape}: {e}"),
        )
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Portal {
    fn grant(&self, id: &Identity) -> Option<Grant> {
        self.inner
            .node
            .view
            .read(|inv| idp::grant(inv.idp_mappings(), &id.groups))
    }

    fn counted(&self, result: &str) {
        self.inner
            .metrics
            .portal_signins
            .get_or_create(&ReasonLabels {
                reason: result.into(),
            })
            .inc();
    }

    /// A replicated write by the signed-in person; its result applied here
    /// before the answer (the next page shows it). While the cluster elects
    /// a leader (the one that served this person just died) the write is
    /// retried for up to [`WRITE_PATIENCE`] under one request id, so an
    /// attempt whose answer was lost is applied once, not twice.
    async fn write(&self, subject: &str, cmd: Command) -> Result<Response, Refusal> {
        let node = &self.inner.node;
        let req = Request {
            actor: format!("idp:{subject}"),
            at_ms: now_ms(),
            request_id: Some(format!("portal-{}", random_token())),
            cmd,
        };
        let rejected = |e: crate::model::ApplyError| {
            use crate::model::ErrorKind::*;
            let status = match e.kind {
                InvalidArgument | OutOfRange => StatusCode::BAD_REQUEST,
                NotFound => StatusCode::NOT_FOUND,
                AlreadyExists | FailedPrecondition => StatusCode::CONFLICT,
                ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
                PermissionDenied => StatusCode::FORBIDDEN,
            };
            refuse(status, "refused", e.message)
        };
        let deadline = tokio::time::Instant::now() + WRITE_PATIENCE;
        let w = loop {
            match node.write(req.clone()).await {
                Ok(w) => break w,
                Err(crate::raft::NodeError::Rejected(e)) => return Err(rejected(e)),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    let why = format!(
                        "the cluster cannot take the change right now ({e}); try again in a moment"
                    );
                    return Err(refuse(StatusCode::SERVICE_UNAVAILABLE, "unavailable", why));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "portal: write waits for a leader");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let _ = node
            .wait_applied(w.index, crate::raft::CLIENT_TIMEOUT)
            .await;
        match w.response {
            Response::Rejected(e) => Err(rejected(e)),
            r => Ok(r),
        }
    }

    /// Record a refused sign-in (audit, metric, log) and show why.
    async fn refused_signin(&self, subject: &str, code: &'static str, why: String) -> HttpResponse {
        self.counted(code);
        warn!(subject, reason = %why, "portal: sign-in refused");
        let audit = Command::SignIn {
            subject: subject.chars().take(200).collect(),
            error: Some(why.chars().take(250).collect()),
        };
        if let Err(e) = self.write(subject, audit).await {
            if e.code != "refused" {
                warn!(error = %e.message, "portal: could not audit a refused sign-in");
            }
        }
        page_refusal(refuse(StatusCode::FORBIDDEN, code, why))
    }
}

async fn home(State(p): State<Portal>, jar: PrivateCookieJar) -> HttpResponse {
    match session(&jar) {
        None => pages::signed_out().into_response(),
        Some(s) => {
            let (devices, settings) = p.inner.node.view.read(|inv| {
                (
                    inv.enrolled_devices(&s.id.subject)
                        .cloned()
                        .collect::<Vec<_>>(),
                    inv.settings().clone(),
                )
            });
            let grant = p.grant(&s.id);
            pages::home(&s, grant.as_ref(), &devices, &settings).into_response()
        }
    }
}

async fn login(State(p): State<Portal>, jar: PrivateCookieJar) -> HttpResponse {
    match p.inner.oidc.begin().await {
        Ok((url, pending)) => {
            let login = Login {
                pending,
                expires_ms: now_ms() + LOGIN_WINDOW_MS,
            };
            let value = serde_json::to_string(&login).expect("serialises");
            let jar = jar.add(cookie(
                LOGIN_COOKIE,
                value,
                "/portal/callback",
                LOGIN_WINDOW_MS,
            ));
            (jar, Redirect::to(&url)).into_response()
        }
        Err(e) => {
            p.counted("provider_unreachable");
            warn!(error = %e, "portal: cannot start a sign-in");
            page_refusal(refuse(
                StatusCode::BAD_GATEWAY,
                "provider",
                format!("Sign-in is unavailable: {e}"),
            ))
        }
    }
}

#[derive(Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

async fn callback(
    State(p): State<Portal>,
    jar: PrivateCookieJar,
    Query(q): Query<CallbackQuery>,
) -> HttpResponse {
    // The pending sign-in is used once, whatever happens next.
    let pending = jar
        .get(LOGIN_COOKIE)
        .and_then(|c| serde_json::from_str::<Login>(c.value()).ok());
    let jar = jar.remove(Cookie::build(LOGIN_COOKIE).path("/portal/callback"));
    let refused = |code, msg: &str| {
        p.counted(code);
        warn!(reason = msg, "portal: sign-in refused");
        (
            jar.clone(),
            page_refusal(refuse(StatusCode::BAD_REQUEST, code, msg)),
        )
            .into_response()
    };
    if let Some(e) = &q.error {
        let d = q.error_description.as_deref().unwrap_or("");
        return refused(
            "provider_error",
            &format!("The identity provider ended the sign-in: {e} {d}"),
        );
    }
    let Some(login) = pending.filter(|l| l.expires_ms > now_ms()) else {
        return refused(
            "no_pending",
            "This sign-in was not started here, was already used, or took longer than 10 minutes. Start again from the portal.",
        );
    };
    let (Some(code), Some(state)) = (q.code, q.state) else {
        return refused(
            "bad_callback",
            "The identity provider's answer has no code or state.",
        );
    };
    if !constant_time_eq(state.as_bytes(), login.pending.state.as_bytes()) {
        return refused(
            "bad_state",
            "The sign-in's state does not match the one this browser started (a forged or replayed link). Start again from the portal.",
        );
    }
    let id = match p.inner.oidc.finish(code, &login.pending).await {
        Ok(id) => id,
        Err(e) => {
            let code = match &e {
                oidc::OidcError::Discovery { .. } => "provider_unreachable",
                oidc::OidcError::Exchange(_) => "code_refused",
                _ => "token_refused",
            };
            return (
                jar,
                p.refused_signin("(unverified)", code, e.to_string()).await,
            )
                .into_response();
        }
    };
    let Some(grant) = p.grant(&id) else {
        let why = match id.groups.is_empty() {
            true => "Your account has no groups, and anygate gives access by group: ask your administrator to add you to a group that has VPN access.".to_string(),
            false => format!(
                "None of your groups ({}) gives access to this VPN: ask your administrator for access.",
                id.groups.join(", ")
            ),
        };
        return (jar, p.refused_signin(&id.subject, "no_access", why).await).into_response();
    };
    if grant.require_mfa && !mfa(&id) {
        let why = "Your group requires multi-factor authentication, and this sign-in did not use it: sign out at your identity provider and sign in with your second factor.".to_string();
        return (
            jar,
            p.refused_signin(&id.subject, "mfa_required", why).await,
        )
            .into_response();
    }
    // Signed in: the audit record, then the renewal of this person's
    // devices (a sign-in before they expire extends them, same keys).
    let subject = id.subject.clone();
    if let Err(e) = p
        .write(
            &subject,
            Command::SignIn {
                subject: subject.clone(),
                error: None,
            },
        )
        .await
    {
        return (jar, page_refusal(e)).into_response();
    }
    let until = now_ms() + grant.lifetime_ms as i64;
    match p
        .write(
            &subject,
            Command::RenewUser {
                user: subject.clone(),
                until_ms: until,
            },
        )
        .await
    {
        Ok(Response::Peers(renewed)) if !renewed.is_empty() => {
            info!(subject, devices = renewed.len(), "portal: devices renewed");
        }
        Ok(_) => {}
        Err(e) => warn!(subject, error = %e.message, "portal: renewal failed"),
    }
    p.counted("ok");
    info!(subject, display = %id.display, groups = ?id.groups, "portal: signed in");
    let lifetime = p.inner.cfg.session_lifetime.as_millis() as i64;
    let s = Session {
        id,
        csrf: random_token(),
        expires_ms: now_ms() + lifetime,
    };
    let jar = jar.add(cookie(
        SESSION_COOKIE,
        serde_json::to_string(&s).expect("serialises"),
        "/portal",
        lifetime,
    ));
    (jar, Redirect::to("/portal")).into_response()
}

/// The token says a second factor was used (RFC 8176 `amr` values).
fn mfa(id: &Identity) -> bool {
    id.amr.iter().any(|m| {
        matches!(
            m.as_str(),
            "mfa" | "otp" | "hwk" | "swk" | "sms" | "fpt" | "face" | "iris"
        )
    })
}

fn random_token() -> String {
    use base64::Engine;
    let mut b = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

async fn logout(jar: PrivateCookieJar, headers: HeaderMap) -> HttpResponse {
    if let Err(r) = session_for_change(&jar, &headers) {
        return r.into_response();
    }
    let jar = jar.remove(Cookie::build(SESSION_COOKIE).path("/portal"));
    (jar, StatusCode::NO_CONTENT).into_response()
}

/// One device as the portal shows it.
#[derive(Serialize)]
struct DeviceView {
    name: String,
    public_key: String,
    addresses: Vec<String>,
    state: String,
    expires_at_ms: Option<i64>,
}

async fn list_devices(State(p): State<Portal>, jar: PrivateCookieJar) -> HttpResponse {
    let Some(s) = session(&jar) else {
        return signed_out().into_response();
    };
    let devices: Vec<DeviceView> = p.inner.node.view.read(|inv| {
        inv.enrolled_devices(&s.id.subject)
            .map(|d| DeviceView {
                name: d.device.clone(),
                public_key: d.public_key.to_string(),
                addresses: d.addresses.iter().map(|a| a.to_string()).collect(),
                state: format!("{:?}", d.state).to_lowercase(),
                expires_at_ms: d.expires_at_ms,
            })
            .collect()
    });
    Json(devices).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrollRequest {
    name: String,
    public_key: String,
}

/// What an enrollment hands back: the config without its private key
/// (the page or the CLI that made the key puts it in).
#[derive(Serialize)]
struct Enrolled {
    name: String,
    public_key: String,
    addresses: Vec<String>,
    expires_at_ms: Option<i64>,
    config: String,
    /// The line of `config` the private key replaces.
    private_key_line: String,
}

fn check_device_name(name: &str) -> Result<(), Refusal> {
    let ok = !name.trim().is_empty()
        && name.len() <= DEVICE_NAME_MAX
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_' | '.' | '\'' | '(' | ')'));
    match ok && name.trim() == name {
        true => Ok(()),
        false => Err(refuse(
            StatusCode::BAD_REQUEST,
            "bad_name",
            format!("a device name is 1-{DEVICE_NAME_MAX} letters, digits, spaces and - _ . ' ( ), without leading or trailing spaces"),
        )),
    }
}

async fn enroll(
    State(p): State<Portal>,
    jar: PrivateCookieJar,
    headers: HeaderMap,
    body: Result<Json<EnrollRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Enrolled>, Refusal> {
    let s = session_for_change(&jar, &headers)?;
    let req = json_body(body, r#"{"name": …, "public_key": …}"#)?;
    check_device_name(&req.name)?;
    let key: WgKey = req.public_key.trim().parse().map_err(|_| {
        refuse(
            StatusCode::BAD_REQUEST,
            "bad_key",
            "public_key is not a WireGuard public key (44 characters of base64)",
        )
    })?;
    let grant = p.grant(&s.id).ok_or_else(|| {
        refuse(
            StatusCode::FORBIDDEN,
            "no_access",
            "none of your groups gives access to this VPN any more",
        )
    })?;
    let Some(group) = grant.groups.first().cloned() else {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "no_access",
            "your groups give console access only, no VPN access",
        ));
    };
    let mut labels = std::collections::BTreeMap::new();
    labels.insert(
        "display".to_string(),
        s.id.display.chars().take(200).collect(),
    );
    let peer = NewPeer {
        public_key: key,
        preshared_key: None,
        allowed_ips: vec![],
        addresses: vec![],
        user: s.id.subject.clone(),
        device: req.name.clone(),
        group,
        labels,
        persistent_keepalive: None,
        expires_at_ms: Some(now_ms() + grant.lifetime_ms as i64),
        pool: None,
        state: None,
    };
    let r = p
        .write(
            &s.id.subject,
            Command::Enroll {
                peer,
                max_devices: grant.max_devices,
            },
        )
        .await?;
    let Response::Peers(added) = r else {
        return Err(refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "unexpected answer from the cluster",
        ));
    };
    let d = &added[0];
    p.inner.metrics.portal_enrollments.inc();
    info!(subject = %s.id.subject, device = %d.device, key = %d.public_key, "portal: device enrolled");
    let settings = p.inner.node.view.read(|inv| inv.settings().clone());
    let config = client_config(d, &settings).map_err(|e| {
        refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "settings",
            format!("{e}; an administrator must fix the gateway settings"),
        )
    })?;
    Ok(Json(Enrolled {
        name: d.device.clone(),
        public_key: d.public_key.to_string(),
        addresses: d.addresses.iter().map(|a| a.to_string()).collect(),
        expires_at_ms: d.expires_at_ms,
        config,
        private_key_line: format!(
            "# {}",
            anygate_core::wgquick::private_key_placeholder(&d.public_key.to_string())
        ),
    }))
}

pub(crate) fn client_config(
    d: &crate::model::Peer,
    s: &crate::model::Settings,
) -> Result<String, anygate_core::wgquick::ValueError> {
    let text = |o: Option<String>| o.unwrap_or_default();
    anygate_core::wgquick::client(&anygate_core::wgquick::Client {
        title: d.device.clone(),
        public_key: d.public_key.to_string(),
        private_key: None,
        preshared_key: None,
        addresses: d.addresses.iter().map(|a| a.to_string()).collect(),
        dns: s.dns.iter().map(|a| a.to_string()).collect(),
        mtu: s.mtu.into(),
        server_public_key: text(s.server_public_key.map(|k| k.to_string())),
        hosts: [
            text(s.endpoint_host.clone()),
            text(s.anycast_v4.map(|a| a.to_string())),
            text(s.anycast_v6.map(|a| a.to_string())),
        ],
        listen_port: s.listen_port.into(),
        routes: s.client_routes.iter().map(|r| r.to_string()).collect(),
        keepalive: d.persistent_keepalive.into(),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveRequest {
    name: String,
}

async fn remove_device(
    State(p): State<Portal>,
    jar: PrivateCookieJar,
    headers: HeaderMap,
    body: Result<Json<RemoveRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<StatusCode, Refusal> {
    let s = session_for_change(&jar, &headers)?;
    let req = json_body(body, r#"{"name": …}"#)?;
    check_device_name(&req.name)?;
    // Only one's own enrolled devices: an operator's peer under the same
    // user name is not the person's to remove.
    let key = p.inner.node.view.read(|inv| {
        inv.enrolled_devices(&s.id.subject)
            .find(|d| d.device == req.name)
            .map(|d| d.public_key)
    });
    let Some(key) = key else {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("you have no device {:?}", req.name),
        ));
    };
    p.write(
        &s.id.subject,
        Command::RemovePeer {
            peer: crate::model::PeerRef::Key(key),
        },
    )
    .await?;
    info!(subject = %s.id.subject, device = %req.name, "portal: device removed");
    Ok(StatusCode::NO_CONTENT)
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../../web/portal.js"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_are_what_people_type_and_nothing_else() {
        for ok in ["laptop", "Anna's phone", "work-pc (2)", "Büro"] {
            assert!(check_device_name(ok).is_ok(), "{ok}");
        }
        let long = "x".repeat(DEVICE_NAME_MAX + 1);
        for bad in [
            "",
            " laptop",
            "laptop ",
            "a/b",
            "a\nb",
            "<script>",
            long.as_str(),
        ] {
            assert!(check_device_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn mfa_is_read_from_amr() {
        let mut id = Identity {
            subject: "s".into(),
            display: "d".into(),
            groups: vec![],
            amr: vec!["pwd".into()],
            acr: None,
        };
        assert!(!mfa(&id));
        id.amr.push("otp".into());
        assert!(mfa(&id));
    }

    #[test]
    fn csrf_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
