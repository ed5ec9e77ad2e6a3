//! The user portal against a real OpenID provider (oidc-provider): sign-in
//! with the code flow and PKCE, enrollment with a key made on the user's
//! side, the group's limits, renewal, default deny, a gateway failure in
//! the middle of a session, and each bad callback refused with a page that
//! says why and changes nothing.

use crate::harness::*;
use crate::oidc::*;
use serde_json::{json, Value};
use std::time::Duration;

fn users(alice_groups: &[&str]) -> Value {
    json!({
        "alice": {"email": "alice@example.com", "name": "Alice", "groups": alice_groups},
        "bob": {"email": "bob@example.com", "name": "Bob", "groups": ["contractors"]},
        "carol": {"email": "carol@example.com", "name": "Carol", "groups": ["admins-mfa"]},
    })
}

/// alice's enrolled devices as node `ep` lists them.
fn alice_devices(ep: &str) -> Vec<Value> {
    ctl_json(ep, &["peer", "list"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["user"] == "alice")
        .cloned()
        .collect()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Three nodes, each serving the portal on its own loopback port, signed in
/// through one provider; the server key, a pool and alice's group set.
/// Returns the cluster, the portals' URLs, the provider and the server key.
fn portal_cluster(max_devices: &str) -> (Cluster, Vec<String>, Idp, String) {
    let mut c = Cluster::empty();
    let listens: Vec<String> = (1..=3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let portals: Vec<String> = listens.iter().map(|l| format!("https://{l}")).collect();
    let redirects: Vec<String> = portals
        .iter()
        .map(|p| format!("{p}/portal/callback"))
        .collect();
    let idp = Idp::start(c.dir(), users(&["staff"]), &redirects);
    for id in 1..=3u64 {
        let section = portal_section(c.dir(), &format!("n{id}"), &listens[id as usize - 1], &idp);
        let cfg = write_file(c.dir(), &format!("portal-n{id}.toml"), &section);
        c.add_node(id, &["--config", cfg.to_str().unwrap()]);
    }
    c.form();
    let ep = c.all_endpoints();
    let server = random_key();
    ctl_ok(
        &ep,
        &[
            "settings",
            "set",
            "--server-public-key",
            &server,
            "--anycast-v4",
            "198.51.100.1",
        ],
    );
    ctl_ok(&ep, &["pool", "add", "corp", "--cidr", "10.90.0.0/24"]);
    let map = [
        "idp",
        "map",
        "staff",
        "--group",
        "eng",
        "--lifetime",
        "1h",
        "--max-devices",
        max_devices,
    ];
    ctl_ok(&ep, &map);
    (c, portals, idp, server)
}

#[test]
fn sign_in_enroll_renew_and_survive_a_gateway_failure() {
    let (mut c, portals, idp, server) = portal_cluster("2");
    let ep = c.all_endpoints();
    ctl_ok(
        &ep,
        &[
            "idp",
            "map",
            "admins-mfa",
            "--group",
            "ops",
            "--require-mfa",
        ],
    );

    // Signed out: the portal offers the sign-in.
    let b = browser();
    let page = b.get(format!("{}/portal", portals[0])).send().unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(page.text().unwrap().contains("id=\"sign-in\""));

    // Sign in as alice through the provider, timed.
    let t0 = std::time::Instant::now();
    let r = sign_in(&b, &portals[0], "alice");
    assert_eq!(r.status(), 303, "{}", r.text().unwrap_or_default());
    assert_eq!(r.headers()["location"], "/portal");
    let set_cookie: Vec<String> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    let session = set_cookie
        .iter()
        .find(|c| c.starts_with("anygate_session="))
        .expect("a session cookie");
    for attr in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/portal"] {
        assert!(
            session.contains(attr),
            "session cookie has {attr}: {session}"
        );
    }
    let home = b
        .get(format!("{}/portal", portals[0]))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(home.contains("alice@example.com"), "{home}");
    assert!(home.contains("id=\"no-devices\""), "{home}");

    // Enroll: only the public key goes to the portal.
    let token = csrf(&b, &portals[0]);
    let laptop = random_key();
    let r = b
        .post(format!("{}/portal/devices", portals[0]))
        .header("x-csrf-token", &token)
        .json(&json!({"name": "laptop", "public_key": laptop}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap_or_default());
    let enrolled: Value = r.json().unwrap();
    let took = t0.elapsed();
    eprintln!("portal: sign-in to config in hand (HTTP, no browser): {took:?}");
    let config = enrolled["config"].as_str().unwrap();
    let line = enrolled["private_key_line"].as_str().unwrap();
    assert!(config.contains(line), "{config}");
    assert!(config.contains("Address = 10.90.0.2/32"), "{config}");
    assert!(
        config.contains(&format!("PublicKey = {server}")),
        "{config}"
    );
    assert!(config.contains("Endpoint = 198.51.100.1:51820"), "{config}");
    let with_key = config.replace(line, &format!("PrivateKey = {}", random_key()));
    anygate_core::wgquick::check(&with_key).expect("a config wg-quick accepts");
    // The peer is in every node's inventory: user = the subject, group
    // from the mapping, expiry = the group's lifetime.
    for id in 1..=3 {
        let d = eventually(
            &format!("node {id} lists alice's laptop"),
            Duration::from_secs(10),
            || {
                let d = alice_devices(&c.addr(id));
                (d.len() == 1).then(|| d[0].clone())
            },
        );
        assert_eq!(d["public_key"], laptop.as_str());
        assert_eq!(d["device"], "laptop");
        assert_eq!(d["group"], "eng");
        assert_eq!(d["labels"]["enrolled"], "sso", "{d}");
        let exp = d["expires_at_ms"].as_i64().unwrap();
        assert!(
            (exp - now_ms() - 3_600_000).abs() < 120_000,
            "expiry ≈ 1 h: {d}"
        );
    }
    let first_expiry = alice_devices(&ep)[0]["expires_at_ms"].as_i64().unwrap();

    // Bad input changes nothing.
    let post = |path: &str, token: Option<&str>, body: Value| {
        let mut r = b.post(format!("{}{path}", portals[0])).json(&body);
        if let Some(t) = token {
            r = r.header("x-csrf-token", t);
        }
        let r = r.send().unwrap();
        let status = r.status().as_u16();
        (status, r.json::<Value>().unwrap_or_default())
    };
    let k = random_key();
    let (s, v) = post(
        "/portal/devices",
        None,
        json!({"name": "phone", "public_key": k}),
    );
    assert_eq!((s, v["code"].as_str()), (403, Some("csrf")), "{v}");
    let (s, v) = post(
        "/portal/devices",
        Some("forged"),
        json!({"name": "phone", "public_key": k}),
    );
    assert_eq!((s, v["code"].as_str()), (403, Some("csrf")), "{v}");
    let (s, v) = post(
        "/portal/devices",
        Some(&token),
        json!({"name": "phone", "public_key": "not-a-key"}),
    );
    assert_eq!((s, v["code"].as_str()), (400, Some("bad_key")), "{v}");
    let (s, v) = post(
        "/portal/devices",
        Some(&token),
        json!({"name": "<script>", "public_key": k}),
    );
    assert_eq!((s, v["code"].as_str()), (400, Some("bad_name")), "{v}");
    let (s, v) = post(
        "/portal/devices",
        Some(&token),
        json!({"name": "x".repeat(5000), "public_key": k}),
    );
    assert_eq!((s, v["code"].as_str()), (400, Some("bad_name")), "{v}");
    let (s, v) = post(
        "/portal/devices",
        Some(&token),
        json!({"name": "laptop", "public_key": k}),
    );
    assert_eq!(s, 409, "a second device with the same name: {v}");
    let (s, v) = post(
        "/portal/devices",
        Some(&token),
        json!({"name": "phone", "public_key": k, "admin": true}),
    );
    assert_eq!((s, v["code"].as_str()), (400, Some("bad_request")), "{v}");
    assert_eq!(
        alice_devices(&ep).len(),
        1,
        "nothing added by a refused request"
    );

    // The group allows two devices: the second passes, the third is refused.
    let (s, v) = post(
        "/portal/devices",
        Some(&token),
        json!({"name": "phone", "public_key": k}),
    );
    assert_eq!(s, 200, "{v}");
    let (s, v) = post(
        "/portal/devices",
        Some(&token),
        json!({"name": "tablet", "public_key": random_key()}),
    );
    assert_eq!(s, 429, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("already has 2 enrolled devices"),
        "{v}"
    );
    assert_eq!(alice_devices(&ep).len(), 2);

    // The gateway that served the sign-in dies: the next page load and the
    // next change at another gateway need no new sign-in (the session is a
    // cookie every gateway can read).
    c.node(1).kill();
    let other = &portals[1];
    let page = b
        .get(format!("{other}/portal"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        page.contains("alice@example.com") && page.contains("data-device=\"laptop\""),
        "{page}"
    );
    let r = b
        .post(format!("{other}/portal/devices/remove"))
        .header("x-csrf-token", &token)
        .json(&json!({"name": "phone"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 204, "{}", r.text().unwrap_or_default());
    let live = c.live_endpoints();
    eventually("phone removed everywhere", Duration::from_secs(10), || {
        (alice_devices(&c.addr(2)).len() == 1 && alice_devices(&c.addr(3)).len() == 1).then_some(())
    });

    // Sign in again (at another gateway): the same key, a later expiry.
    let b2 = browser();
    let r = sign_in(&b2, &portals[2], "alice");
    assert_eq!(r.status(), 303);
    let d = eventually("renewed", Duration::from_secs(10), || {
        let d = alice_devices(&live);
        (d[0]["expires_at_ms"].as_i64().unwrap() > first_expiry).then(|| d[0].clone())
    });
    assert_eq!(d["public_key"], laptop.as_str(), "same key after renewal");

    // Default deny: bob's group is not mapped. A page says why; the
    // refusal is audited; nothing is created.
    let r = sign_in(&browser(), &portals[1], "bob");
    assert_eq!(r.status(), 403);
    let page = r.text().unwrap();
    assert!(
        page.contains("None of your groups (contractors) gives access"),
        "{page}"
    );
    // MFA required, and the provider's token says password only.
    let r = sign_in(&browser(), &portals[1], "carol");
    assert_eq!(r.status(), 403);
    assert!(r.text().unwrap().contains("requires multi-factor"));

    // alice leaves the group at the provider: her next sign-in is refused
    // and renews nothing.
    idp.set_users(users(&["alumni"]));
    let before = alice_devices(&live)[0]["expires_at_ms"].as_i64().unwrap();
    let r = sign_in(&browser(), &portals[2], "alice");
    assert_eq!(r.status(), 403);
    assert_eq!(
        alice_devices(&live)[0]["expires_at_ms"].as_i64().unwrap(),
        before
    );

    // The audit names the provider's subject as the actor.
    let audit = ctl_json(&live, &["audit", "list"]);
    let entries: Vec<(String, String, bool)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap_or_default().to_string(),
                e["action"].as_str().unwrap_or_default().to_string(),
                e["error"].as_str().is_some_and(|s| !s.is_empty()),
            )
        })
        .collect();
    for want in [
        ("idp:alice", "signin", false),
        ("idp:alice", "device.enroll", false),
        ("idp:alice", "device.renew", false),
        ("idp:alice", "peer.remove", false),
        ("idp:bob", "signin", true),
        ("idp:alice", "signin", true),
    ] {
        let want = (want.0.to_string(), want.1.to_string(), want.2);
        assert!(entries.contains(&want), "audit has {want:?}: {entries:?}");
    }
}

#[test]
fn forged_replayed_and_reused_callbacks_are_refused() {
    let mut c = Cluster::empty();
    let listen = format!("127.0.0.1:{}", free_port());
    let portal = format!("https://{listen}");
    let idp = Idp::start(
        c.dir(),
        users(&["staff"]),
        &[format!("{portal}/portal/callback")],
    );
    let section = portal_section(c.dir(), "solo", &listen, &idp);
    let cfg = write_file(c.dir(), "portal.toml", &section);
    c.add_node(1, &["--config", cfg.to_str().unwrap()]);
    c.form();
    let ep = c.all_endpoints();
    ctl_ok(&ep, &["idp", "map", "staff", "--group", "eng"]);
    let refused = |r: reqwest::blocking::Response, want: &str| {
        let status = r.status();
        let page = r.text().unwrap();
        assert!(status.is_client_error(), "{status}: {page}");
        assert!(page.contains(want), "page says {want:?}: {page}");
        assert!(!page.contains("csrf-token"), "not signed in: {page}");
    };

    // A callback whose state was changed.
    let b = browser();
    let cb = to_callback(&b, &portal, "alice");
    let forged = cb.replace("state=", "state=x");
    refused(b.get(&forged).send().unwrap(), "does not match");
    // The pending sign-in was used up by that attempt: the genuine
    // callback after it is refused as well.
    refused(b.get(&cb).send().unwrap(), "already used");

    // A callback opened in a browser that never started a sign-in.
    let cb = to_callback(&browser(), &portal, "alice");
    refused(browser().get(&cb).send().unwrap(), "was not started here");

    // A good sign-in, then its callback replayed.
    let b = browser();
    let cb = to_callback(&b, &portal, "alice");
    assert_eq!(b.get(&cb).send().unwrap().status(), 303);
    refused(b.get(&cb).send().unwrap(), "already used");

    // An authorization code used twice: a new sign-in's state with the
    // old code. The provider refuses the code.
    let b = browser();
    let old = cb.clone();
    let fresh = to_callback(&b, &portal, "alice");
    let state = |u: &str| {
        reqwest::Url::parse(u)
            .unwrap()
            .query_pairs()
            .find(|(k, _)| k == "state")
            .unwrap()
            .1
            .to_string()
    };
    let reused = old.replace(&state(&old), &state(&fresh));
    refused(b.get(&reused).send().unwrap(), "identity provider refused");

    // The provider reports an error (the user cancelled).
    let b = browser();
    let _ = to_callback(&b, &portal, "alice");
    refused(
        b.get(format!(
            "{portal}/portal/callback?error=access_denied&state=x"
        ))
        .send()
        .unwrap(),
        "access_denied",
    );
    // The audit has the refused code exchange, and no device was made.
    let audit = ctl_json(&ep, &["audit", "list"]);
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "signin"
                && e["error"].as_str().is_some_and(|s| s.contains("refused"))),
        "{audit}"
    );
    assert!(ctl_json(&ep, &["peer", "list"])
        .as_array()
        .unwrap()
        .is_empty());
}

/// Every file under `dir` and the node logs beside it, as bytes.
fn contains_anywhere(dir: &std::path::Path, needle: &[u8]) -> Option<std::path::PathBuf> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if std::fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
            {
                return Some(p);
            }
        }
    }
    None
}

#[test]
fn a_browser_makes_its_own_key_and_keeps_its_session_across_a_gateway_failure() {
    use crate::webdriver::{provider_sign_in, Browser};
    let (mut c, portals, _idp, server) = portal_cluster("3");
    let ep = c.all_endpoints();

    // Sign in at the provider and enroll a laptop: the key pair is made by
    // the page (WebCrypto X25519), timed from opening the portal to the
    // config on screen.
    let b = Browser::start(c.dir());
    let t0 = std::time::Instant::now();
    b.goto(&format!("{}/portal", portals[0]));
    b.click("#sign-in");
    provider_sign_in(&b, "alice");
    assert_eq!(b.text("#who"), "alice@example.com");
    b.type_into("#device-name", "laptop");
    b.click("#add-device");
    let config = b.text("#result:not([hidden]) #config");
    eprintln!(
        "portal: sign-in to config in hand (headless chromium): {:?}",
        t0.elapsed()
    );
    assert_eq!(
        b.text("#no-devices"),
        "laptop was added: its configuration is below."
    );

    // The config's private key belongs to the public key the cluster holds.
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let private = config
        .lines()
        .find_map(|l| l.strip_prefix("PrivateKey = "))
        .unwrap_or_else(|| panic!("a private key in the page's config: {config}"))
        .trim()
        .to_string();
    let bytes: [u8; 32] = b64.decode(&private).unwrap().try_into().unwrap();
    let public = b64
        .encode(x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(bytes)).as_bytes());
    let devices = alice_devices(&ep);
    assert_eq!(devices.len(), 1, "{devices:?}");
    assert_eq!(devices[0]["device"], "laptop");
    assert_eq!(
        devices[0]["public_key"],
        public.as_str(),
        "the enrolled key is the page's"
    );
    assert!(
        config.contains(&format!("PublicKey = {server}")),
        "{config}"
    );
    let address = devices[0]["addresses"][0].as_str().unwrap().to_string();
    assert!(config.contains(&format!("Address = {address}")), "{config}");
    let link = b.eval(
        "const a = document.getElementById('download'); return [a.href.slice(0, 5), a.download];",
    );
    assert_eq!(link, json!(["blob:", "laptop.conf"]));
    // The private key never reached a gateway: not in a data dir, not in a log.
    for n in 1..=3u64 {
        let dir = c.node(n).dir.clone();
        assert_eq!(
            contains_anywhere(&dir, private.as_bytes()),
            None,
            "private key stored"
        );
        let log = c.node(n).log();
        assert!(!log.contains(&private), "private key in node {n}'s log");
    }
    if let Some(to) = std::env::var_os("ANYGATE_SCREENSHOTS") {
        b.screenshot(&std::path::Path::new(&to).join("portal-enrolled.png"));
    }

    // The gateway that served all of this dies. The same browser opens the
    // portal at another gateway: still signed in, and enrolls again.
    c.node(1).kill();
    b.goto(&format!("{}/portal", portals[1]));
    assert_eq!(
        b.text("#who"),
        "alice@example.com",
        "no new sign-in after the failure"
    );
    assert!(b.has("tr[data-device=laptop]"), "{}", b.source());
    b.type_into("#device-name", "phone");
    b.click("#add-device");
    let phone = b.text("#result:not([hidden]) #config");
    assert!(
        phone.contains("PrivateKey = ") && !phone.contains(&private),
        "{phone}"
    );
    let live = c.live_endpoints();
    assert_eq!(alice_devices(&live).len(), 2);

    // Remove the phone from the list (a confirmation first).
    b.goto(&format!("{}/portal", portals[2]));
    b.click("button.remove[data-device=phone]");
    b.accept_alert();
    eventually("phone gone from the page", Duration::from_secs(10), || {
        (!b.has("tr[data-device=phone]") && b.has("tr[data-device=laptop]")).then_some(())
    });
    let left: Vec<String> = alice_devices(&live)
        .iter()
        .map(|d| d["device"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, vec!["laptop".to_string()]);

    // Sign out: the portal offers the sign-in again.
    b.click("#sign-out");
    b.text("#sign-in");
    assert!(!b.has("#who"));
}
