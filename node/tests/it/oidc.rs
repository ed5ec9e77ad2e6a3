//! A real OpenID provider for the tests (oidc-provider from the npm
//! registry, `deploy/idp`), and a cookie-keeping HTTP client that signs in
//! through it the way a browser does: follow the redirects, fill in the
//! provider's sign-in form, come back to the portal's callback.

use crate::harness::{eventually, free_port, pki, write_file};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

pub const CLIENT_ID: &str = "anygate";
pub const CLIENT_SECRET: &str = "test-client-secret-0123456789";

pub struct Idp {
    pub issuer: String,
    pub users: PathBuf,
    child: Child,
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Idp {
    /// Starts the provider with `users` ({"login": {"email", "name",
    /// "groups"}}) and one confidential client whose redirect URIs are
    /// `redirects`.
    pub fn start(dir: &Path, users: Value, redirects: &[String]) -> Idp {
        let install = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/idp/install");
        let out = Command::new(&install)
            .output()
            .expect("run deploy/idp/install");
        assert!(
            out.status.success(),
            "deploy/idp/install: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let home = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let users_path = write_file(dir, "idp-users.json", &users.to_string());
        let clients = json!([{
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "redirect_uris": redirects,
            "grant_types": ["authorization_code"],
            "response_types": ["code"],
        }]);
        let clients_path = write_file(dir, "idp-clients.json", &clients.to_string());
        let issuer = format!("http://127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.join("idp.log")).unwrap();
        let child = Command::new("node")
            .arg(Path::new(&home).join("provider.mjs"))
            .args(["--issuer", &issuer, "--users"])
            .arg(&users_path)
            .arg("--clients")
            .arg(&clients_path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn node (the test identity provider)");
        let idp = Idp {
            issuer: issuer.clone(),
            users: users_path,
            child,
        };
        let http = reqwest::blocking::Client::new();
        eventually(
            "the identity provider serves discovery",
            Duration::from_secs(20),
            || {
                http.get(format!("{issuer}/.well-known/openid-configuration"))
                    .send()
                    .ok()
                    .filter(|r| r.status().is_success())
            },
        );
        idp
    }

    /// Replace the users file (the provider reads it at every sign-in).
    pub fn set_users(&self, users: Value) {
        std::fs::write(&self.users, users.to_string()).unwrap();
    }
}

/// A `[portal]` config section for a node serving at `url` (its
/// certificate from the test CA).
pub fn portal_section(dir: &Path, name: &str, listen: &str, idp: &Idp) -> String {
    let (cert, key) = pki().issue(
        &format!("portal-{name}"),
        anygate_proto::tls::Role::Node,
        vec!["127.0.0.1".into()],
        None,
    );
    let secret = write_file(dir, &format!("oidc-secret-{name}"), CLIENT_SECRET);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    format!(
        "[portal]\nlisten = \"{listen}\"\ncert = \"{}\"\nkey = \"{}\"\nurl = \"https://{listen}\"\nissuer = \"{}\"\nclient-id = \"{CLIENT_ID}\"\nclient-secret-file = \"{}\"\n",
        cert.display(),
        key.display(),
        idp.issuer,
        secret.display()
    )
}

/// A browser: keeps cookies, trusts the test CA, follows no redirect by
/// itself (the test sees each step).
pub fn browser() -> reqwest::blocking::Client {
    let ca = std::fs::read(pki().ca_path()).unwrap();
    reqwest::blocking::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn location(r: &reqwest::blocking::Response, base: &str) -> String {
    let l = r
        .headers()
        .get("location")
        .unwrap_or_else(|| panic!("a redirect from {base} ({}) has a Location", r.status()))
        .to_str()
        .unwrap();
    match l.starts_with("http") {
        true => l.to_string(),
        false => reqwest::Url::parse(base)
            .unwrap()
            .join(l)
            .unwrap()
            .to_string(),
    }
}

/// Start a sign-in at `portal` and go through the provider as `login`,
/// up to the redirect back to the portal: returns the callback URL (not
/// yet opened).
pub fn to_callback(b: &reqwest::blocking::Client, portal: &str, login: &str) -> String {
    let mut url = format!("{portal}/portal/login");
    for _ in 0..10 {
        let r = b.get(&url).send().unwrap();
        if r.status().is_redirection() {
            let next = location(&r, &url);
            if next.starts_with(portal) && next.contains("/portal/callback") {
                return next;
            }
            url = next;
            continue;
        }
        // The provider's sign-in form.
        assert_eq!(r.status(), 200, "{url}: {}", r.text().unwrap_or_default());
        let body = r.text().unwrap();
        assert!(
            body.contains("name=\"login\""),
            "a sign-in form at {url}: {body}"
        );
        let r = b
            .post(&url)
            .form(&[("prompt", "login"), ("login", login), ("password", "any")])
            .send()
            .unwrap();
        assert!(
            r.status().is_redirection(),
            "sign-in form submitted: {}",
            r.status()
        );
        url = location(&r, &url);
    }
    panic!("no redirect back to {portal} after 10 steps");
}

/// A full sign-in; returns the portal's answer to the callback.
pub fn sign_in(
    b: &reqwest::blocking::Client,
    portal: &str,
    login: &str,
) -> reqwest::blocking::Response {
    let cb = to_callback(b, portal, login);
    b.get(cb).send().unwrap()
}

/// The CSRF token on the signed-in portal page.
pub fn csrf(b: &reqwest::blocking::Client, portal: &str) -> String {
    let page = b
        .get(format!("{portal}/portal"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let at = page
        .find("name=\"csrf-token\" content=\"")
        .unwrap_or_else(|| panic!("signed-in page has a CSRF token: {page}"));
    let rest = &page[at + "name=\"csrf-token\" content=\"".len()..];
    rest[..rest.find('"').unwrap()].to_string()
}
