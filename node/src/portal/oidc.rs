//! The identity provider side of the portal: discovery, the authorization
//! code flow with PKCE, and the ID token's checks (signature against the
//! provider's JWKS, issuer, audience, expiry, nonce, the configured
//! algorithms), all by the `openidconnect` crate. The provider's metadata
//! and keys are fetched on first use and again when a token names a key
//! they do not hold (the provider rotated its keys).

use crate::config::PortalConfig;
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreErrorResponseType,
    CoreGenderClaim, CoreJsonWebKey, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm,
    CoreProviderMetadata, CoreRevocableToken, CoreRevocationErrorResponse,
    CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AdditionalClaims, AuthorizationCode, Client, ClientId, ClientSecret, CsrfToken,
    EmptyExtraTokenFields, EndpointMaybeSet, EndpointNotSet, EndpointSet, IdTokenFields, IssuerUrl,
    Nonce, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, StandardErrorResponse,
    StandardTokenResponse, TokenResponse,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// Every claim the standard set does not name (the groups claim's name is
/// configured, so it is looked up here).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Extra {
    #[serde(flatten)]
    rest: HashMap<String, serde_json::Value>,
}
impl AdditionalClaims for Extra {}

type Fields = IdTokenFields<
    Extra,
    EmptyExtraTokenFields,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
type Tokens = StandardTokenResponse<Fields, CoreTokenType>;
type OidcClient = Client<
    Extra,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    Tokens,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// Metadata is fetched again at most this often when a token names an
/// unknown key (a flood of forged tokens cannot hammer the provider).
const REFRESH_MIN: Duration = Duration::from_secs(10);
/// And in any case after this long.
const METADATA_TTL: Duration = Duration::from_secs(3600);

/// What the browser must bring back to the callback (kept in an encrypted
/// cookie, never on the server): the `state` it was sent with, the nonce
/// the ID token must carry and the PKCE verifier.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pending {
    pub state: String,
    pub nonce: String,
    pub verifier: String,
}

/// A signed-in person, from a checked ID token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub subject: String,
    /// Email, else name, else the subject.
    pub display: String,
    pub groups: Vec<String>,
    /// `amr` values and `acr` (MFA checks).
    pub amr: Vec<String>,
    pub acr: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("the identity provider {issuer} cannot be reached or its discovery document is unusable: {msg}")]
    Discovery { issuer: String, msg: String },
    #[error("the identity provider refused the sign-in: {0}")]
    Exchange(String),
    #[error("the identity provider returned no ID token")]
    NoIdToken,
    #[error("the ID token was refused: {0}")]
    Token(String),
    #[error("the {claim} claim is not a list of group names")]
    Groups { claim: String },
}

pub struct Provider {
    cfg: PortalConfig,
    http: reqwest::Client,
    algs: Vec<CoreJwsSigningAlgorithm>,
    cached: Mutex<Option<(OidcClient, Instant)>>,
}

fn alg(name: &str) -> CoreJwsSigningAlgorithm {
    serde_json::from_value(serde_json::Value::String(name.into()))
        .expect("the config only lets known algorithm names through")
}

impl Provider {
    pub fn new(cfg: PortalConfig) -> Result<Provider, OidcError> {
        let http = reqwest::Client::builder()
            // Following redirects would open the node to SSRF.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| OidcError::Discovery {
                issuer: cfg.issuer.clone(),
                msg: e.to_string(),
            })?;
        let algs = cfg.algorithms.iter().map(|a| alg(a)).collect();
        Ok(Provider {
            cfg,
            http,
            algs,
            cached: Mutex::new(None),
        })
    }

    pub fn redirect_uri(&self) -> String {
        format!("{}/portal/callback", self.cfg.url)
    }

    /// The client, from metadata at most METADATA_TTL old; `refresh`
    /// fetches it again (not more often than REFRESH_MIN).
    async fn client(&self, refresh: bool) -> Result<OidcClient, OidcError> {
        let mut c = self.cached.lock().await;
        if let Some((client, at)) = &*c {
            let fresh = at.elapsed() < METADATA_TTL;
            if fresh && (!refresh || at.elapsed() < REFRESH_MIN) {
                return Ok(client.clone());
            }
        }
        let disc = |msg: String| OidcError::Discovery {
            issuer: self.cfg.issuer.clone(),
            msg,
        };
        let issuer = IssuerUrl::new(self.cfg.issuer.clone()).map_err(|e| disc(e.to_string()))?;
        let meta = CoreProviderMetadata::discover_async(issuer, &self.http)
            .await
            .map_err(|e| disc(error_chain(&e)))?;
        let redirect = RedirectUrl::new(self.redirect_uri()).map_err(|e| disc(e.to_string()))?;
        let client = OidcClient::from_provider_metadata(
            meta,
            ClientId::new(self.cfg.client_id.clone()),
            Some(ClientSecret::new(self.cfg.client_secret.clone())),
        )
        .set_redirect_uri(redirect);
        *c = Some((client.clone(), Instant::now()));
        Ok(client)
    }

    /// Where to send the browser, and what it must bring back.
    pub async fn begin(&self) -> Result<(String, Pending), OidcError> {
        let client = self.client(false).await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state, nonce) = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .add_scope(Scope::new("email".into()))
            .add_scope(Scope::new("profile".into()))
            .add_scope(Scope::new(self.cfg.groups_claim.clone()))
            .set_pkce_challenge(challenge)
            .url();
        Ok((
            url.to_string(),
            Pending {
                state: state.secret().clone(),
                nonce: nonce.secret().clone(),
                verifier: verifier.secret().clone(),
            },
        ))
    }

    /// The code the browser brought back, exchanged (with the PKCE
    /// verifier) and its ID token checked.
    pub async fn finish(&self, code: String, pending: &Pending) -> Result<Identity, OidcError> {
        let client = self.client(false).await?;
        let tokens = client
            .exchange_code(AuthorizationCode::new(code))
            .map_err(|e| OidcError::Exchange(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pending.verifier.clone()))
            .request_async(&self.http)
            .await
            .map_err(|e| OidcError::Exchange(error_chain(&e)))?;
        let token = tokens.id_token().ok_or(OidcError::NoIdToken)?;
        let nonce = Nonce::new(pending.nonce.clone());
        let check = |client: &OidcClient| {
            let verifier = client
                .id_token_verifier()
                .set_allowed_algs(self.algs.iter().cloned());
            token.claims(&verifier, &nonce).cloned()
        };
        let claims = match check(&client) {
            Ok(c) => c,
            // A key the cached JWKS does not hold: the provider may have
            // rotated; fetch its keys once more and check again.
            Err(openidconnect::ClaimsVerificationError::SignatureVerification(
                openidconnect::SignatureVerificationError::NoMatchingKey,
            )) => {
                let client = self.client(true).await?;
                check(&client).map_err(|e| OidcError::Token(e.to_string()))?
            }
            Err(e) => return Err(OidcError::Token(e.to_string())),
        };
        let subject = claims.subject().to_string();
        let email = claims.email().map(|e| e.to_string());
        let name = claims
            .name()
            .and_then(|n| n.get(None))
            .map(|n| n.to_string());
        let groups = match claims.additional_claims().rest.get(&self.cfg.groups_claim) {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::String(g)) => vec![g.clone()],
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| OidcError::Groups {
                    claim: self.cfg.groups_claim.clone(),
                })?,
            Some(_) => {
                return Err(OidcError::Groups {
                    claim: self.cfg.groups_claim.clone(),
                })
            }
        };
        Ok(Identity {
            display: email.or(name).unwrap_or_else(|| subject.clone()),
            subject,
            groups,
            amr: claims
                .auth_method_refs()
                .map(|a| a.iter().map(|m| m.to_string()).collect())
                .unwrap_or_default(),
            acr: claims.auth_context_ref().map(|a| a.to_string()),
        })
    }
}

/// An error and its sources, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
