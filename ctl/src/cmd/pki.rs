//! `anygatectl pki ...`: the cluster CA and the certificates of nodes and
//! operators. Local files only; no node is contacted.

use super::Result;
use anygate_proto::pki::{self, Pem};
use anygate_proto::tls::{identity_of, Role};
use clap::Subcommand;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::Status;

#[derive(Subcommand)]
pub enum PkiCmd {
    /// Create a cluster CA (DIR/ca.pem, DIR/ca.key) and a first admin
    /// certificate (DIR/admin.pem, DIR/admin.key).
    ///
    /// Keep ca.key offline once the nodes and operators have their
    /// certificates; every node needs ca.pem.
    Init {
        /// Directory to create the files in (created 0700).
        #[arg(long)]
        dir: PathBuf,
        /// The CA's name.
        #[arg(long, default_value = "anygate cluster CA")]
        name: String,
        /// CA validity in days.
        #[arg(long, default_value_t = 3650)]
        days: u64,
    },
    /// Issue a certificate signed by the CA in DIR: DIR/NAME.pem and
    /// DIR/NAME.key.
    ///
    /// Roles: node (a gateway: give every address and name it is reached at
    /// with --san), admin (everything), operator (peers, pools, drain),
    /// viewer (read-only). To rotate, issue again with --force: the node
    /// re-reads its files within its reload interval, or at once on SIGHUP.
    ///
    ///   anygatectl pki issue --dir pki --role node --name node-1 --san 10.0.0.1 --san gw1.example.net
    ///   anygatectl pki issue --dir pki --role operator --name alice
    Issue {
        #[arg(long)]
        dir: PathBuf,
        /// node, admin, operator or viewer.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// The holder: a node name or an operator's login (recorded in the audit log).
        #[arg(long)]
        name: String,
        /// Address or DNS name the holder serves on (nodes; repeatable).
        #[arg(long)]
        san: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u64,
        /// Replace existing files (rotation).
        #[arg(long)]
        force: bool,
    },
    /// Show who a certificate names, its role, serial, addresses and
    /// when it expires.
    Show { file: PathBuf },
    /// Revoke certificates on every node (admin; contacts the cluster):
    /// each CERT is a certificate file or a serial number (hex, as `pki
    /// show` prints it). Refused from the next request on, open
    /// connections included; for good. Also revoke a removed node's
    /// certificate (a removed node already loses Raft at once: its
    /// certificate names no member's address).
    Revoke {
        #[arg(required = true)]
        certs: Vec<String>,
    },
    /// List the revoked certificate serials (contacts the cluster).
    Revoked,
}

#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a role: node, admin, operator or viewer")]
struct NotARole(String);

fn parse_role(s: &str) -> std::result::Result<Role, NotARole> {
    Role::parse(s).ok_or_else(|| NotARole(s.to_string()))
}

fn io(p: &Path, e: impl std::fmt::Display) -> Status {
    Status::failed_precondition(format!("{}: {e}", p.display()))
}

/// Writes atomically (temp file + rename), with `mode`, so a node polling
/// the file never reads half of it.
/// See `anygate_proto::pki::write_file_atomic`: a temp file created
/// exclusively beside `p` with its mode, fsynced, renamed over it.
pub fn write_file(p: &Path, body: &str, mode: u32) -> Result {
    anygate_proto::pki::write_file_atomic(p, body.as_bytes(), mode).map_err(|e| io(p, e))
}

fn read(p: &Path) -> std::result::Result<String, Status> {
    std::fs::read_to_string(p).map_err(|e| io(p, e))
}

fn bad(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(e.to_string())
}

fn issue_into(dir: &Path, ca: &Pem, req: &pki::Request, force: bool) -> Result<(PathBuf, PathBuf)> {
    let cert = dir.join(format!("{}.pem", req.name));
    let key = dir.join(format!("{}.key", req.name));
    if !force && (cert.exists() || key.exists()) {
        return Err(Status::already_exists(format!(
            "{} exists; give --force to replace it (rotation)",
            cert.display()
        )));
    }
    let pem = pki::issue(ca, req).map_err(bad)?;
    // Key first: a node reloading between the two writes sees a mismatch,
    // refuses it and keeps its old pair until the next check.
    write_file(&key, &pem.key, 0o600)?;
    write_file(&cert, &pem.cert, 0o644)?;
    Ok((cert, key))
}

fn days(d: u64) -> Duration {
    Duration::from_secs(d.saturating_mul(86_400))
}

impl PkiCmd {
    pub fn run(self, json: bool) -> Result {
        match self {
            PkiCmd::Init { dir, name, days: d } => {
                let ca_cert = dir.join("ca.pem");
                if ca_cert.exists() {
                    return Err(Status::already_exists(format!(
                        "{} exists: this directory already has a CA",
                        ca_cert.display()
                    )));
                }
                std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(|e| io(&dir, e))?;
                let ca = pki::new_ca(&name, days(d)).map_err(bad)?;
                write_file(&dir.join("ca.key"), &ca.key, 0o600)?;
                write_file(&ca_cert, &ca.cert, 0o644)?;
                let req = pki::Request::new("admin", Role::Admin, vec![], days(365));
                let (cert, key) = issue_into(&dir, &ca, &req, false)?;
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"ca": ca_cert, "ca_key": dir.join("ca.key"), "admin_cert": cert, "admin_key": key})
                    );
                } else {
                    println!(
                        "CA        {}  (key {}: keep it offline)",
                        ca_cert.display(),
                        dir.join("ca.key").display()
                    );
                    println!("admin     {}  {}", cert.display(), key.display());
                    println!(
                        "next: anygatectl pki issue --dir {} --role node --name node-1 --san ADDRESS",
                        dir.display()
                    );
                    println!(
                        "      export ANYGATE_CA={} ANYGATE_CERT={} ANYGATE_KEY={}",
                        ca_cert.display(),
                        cert.display(),
                        key.display()
                    );
                }
                Ok(())
            }
            PkiCmd::Issue {
                dir,
                role,
                name,
                san,
                days: d,
                force,
            } => {
                let ca = Pem {
                    cert: read(&dir.join("ca.pem"))?,
                    key: read(&dir.join("ca.key"))?,
                };
                if name.contains(['/', '\0']) || name.starts_with('.') {
                    return Err(bad(format!(
                        "{name:?}: a name must not contain / or start with ."
                    )));
                }
                let req = pki::Request::new(&name, role, san, days(d));
                let (cert, key) = issue_into(&dir, &ca, &req, force)?;
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"cert": cert, "key": key, "role": role.as_str(), "name": name})
                    );
                } else {
                    println!("{} ({role})  {}  {}", name, cert.display(), key.display());
                }
                Ok(())
            }
            PkiCmd::Show { file } => {
                let der = CertificateDer::from_pem_slice(read(&file)?.as_bytes())
                    .map_err(|e| bad(format!("{}: {e}", file.display())))?;
                let id = identity_of(&der).map_err(|e| bad(format!("{}: {e}", file.display())))?;
                let expires =
                    std::time::UNIX_EPOCH + Duration::from_secs(id.not_after.max(0) as u64);
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"name": id.name, "role": id.role.as_str(), "not_after": id.not_after, "serial": id.serial, "sans": id.sans})
                    );
                } else {
                    println!(
                        "{}  role {}  serial {}  expires {}{}",
                        id.name,
                        id.role,
                        id.serial,
                        humantime::format_rfc3339_seconds(expires),
                        if id.sans.is_empty() {
                            String::new()
                        } else {
                            format!("  addresses {}", id.sans.join(", "))
                        }
                    );
                }
                Ok(())
            }
            PkiCmd::Revoke { .. } | PkiCmd::Revoked => {
                unreachable!("remote commands run through run_remote")
            }
        }
    }
}

impl PkiCmd {
    /// Whether the command works on local files only (no connection).
    pub fn is_local(&self) -> bool {
        !matches!(self, PkiCmd::Revoke { .. } | PkiCmd::Revoked)
    }

    /// `pki revoke` and `pki revoked`, through the cluster.
    pub async fn run_remote(self, ctx: &crate::Ctx) -> Result {
        use anygate_proto::v1::cluster_service_client::ClusterServiceClient as C;
        use anygate_proto::v1::*;
        let c = &ctx.client;
        match self {
            PkiCmd::Revoke { certs } => {
                let mut serials = Vec::new();
                for s in certs {
                    let p = std::path::Path::new(&s);
                    if p.exists() {
                        let der = CertificateDer::from_pem_slice(read(p)?.as_bytes())
                            .map_err(|e| bad(format!("{s}: {e}")))?;
                        serials.push(
                            identity_of(&der)
                                .map_err(|e| bad(format!("{s}: {e}")))?
                                .serial,
                        );
                    } else {
                        serials.push(s);
                    }
                }
                let req = RevokeCertificatesRequest {
                    serials: serials.clone(),
                };
                let r = c
                    .call(|ch| {
                        let req = req.clone();
                        async move { crate::grpc!(C, ch).revoke_certificates(c.req(req)).await }
                    })
                    .await?;
                if ctx.json {
                    println!(
                        "{}",
                        serde_json::json!({"serials": serials, "newly_revoked": r.revoked})
                    );
                } else {
                    println!(
                        "revoked {} ({} new): refused by every node from its next request",
                        serials.join(", "),
                        r.revoked
                    );
                }
            }
            PkiCmd::Revoked => {
                let r = c
                    .call(|ch| async move {
                        crate::grpc!(C, ch)
                            .list_revoked_certificates(c.req(ListRevokedCertificatesRequest {}))
                            .await
                    })
                    .await?;
                if ctx.json {
                    println!("{}", crate::output::json(&r.certificates));
                } else {
                    let rows = r
                        .certificates
                        .iter()
                        .map(|k| {
                            vec![
                                k.serial.clone(),
                                crate::output::when(k.revoked_at_ms),
                                k.index.to_string(),
                            ]
                        })
                        .collect();
                    println!(
                        "{}",
                        crate::output::table(&["SERIAL", "REVOKED", "LOG INDEX"], rows)
                    );
                }
            }
            _ => unreachable!("local commands run through run"),
        }
        Ok(())
    }
}
