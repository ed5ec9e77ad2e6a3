//! The portal's pages. maud escapes every value at compile time; the page
//! script (`web/portal.js`) is the only script and comes from the portal
//! itself (the Content-Security-Policy allows nothing else).

use super::Session;
use crate::model::idp::Grant;
use crate::model::{Peer, Settings};
use maud::{html, Markup, DOCTYPE};

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem;color:#222}\
h1{font-size:1.5rem}table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #ddd}\
button,.button{background:#0b5fff;color:#fff;border:0;border-radius:4px;padding:.5rem 1rem;font-size:1rem;cursor:pointer;text-decoration:none;display:inline-block}\
button.quiet{background:#eee;color:#222}.refused{border-left:4px solid #c00;padding:.5rem 1rem;background:#fff4f4}\
pre{background:#f6f6f6;padding:1rem;overflow:auto}input{font-size:1rem;padding:.4rem}";

fn layout(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · anygate" }
                style { (STYLE) }
            }
            body { (body) }
        }
    }
}

pub fn signed_out() -> Markup {
    layout(
        "Sign in",
        html! {
            h1 { "Remote access" }
            p { "Sign in with your company account to get a VPN configuration for your devices." }
            p { a.button href="/portal/login" id="sign-in" { "Sign in" } }
        },
    )
}

pub fn refused(message: &str) -> Markup {
    layout(
        "Not signed in",
        html! {
            h1 { "Sign-in refused" }
            p.refused id="refusal" { (message) }
            p { a href="/portal" { "Back to the portal" } }
        },
    )
}

fn when(ms: Option<i64>) -> String {
    match ms {
        None => "never".into(),
        Some(ms) => humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64),
        )
        .to_string(),
    }
}

pub fn home(s: &Session, grant: Option<&Grant>, devices: &[Peer], settings: &Settings) -> Markup {
    let can_enroll = grant.is_some_and(|g| !g.groups.is_empty());
    let limit = grant.map(|g| g.max_devices).unwrap_or(0);
    let ready = settings.server_public_key.is_some();
    layout(
        "Your devices",
        html! {
            // The page script reads the CSRF token from here.
            meta name="csrf-token" content=(s.csrf);
            h1 { "Your devices" }
            p { "Signed in as " strong id="who" { (s.id.display) } "." }
            @if devices.is_empty() {
                p id="no-devices" { "You have no devices yet." }
            } @else {
                table id="devices" {
                    tr { th { "Device" } th { "Address" } th { "State" } th { "Valid until" } th {} }
                    @for d in devices {
                        tr data-device=(d.device) {
                            td { (d.device) }
                            td { @for a in &d.addresses { (a) " " } }
                            td { (format!("{:?}", d.state).to_lowercase()) }
                            td { (when(d.expires_at_ms)) }
                            td { button.quiet.remove data-device=(d.device) { "Remove" } }
                        }
                    }
                }
            }
            @if !can_enroll {
                p.refused { "Your groups give no VPN access, so you cannot add a device." }
            } @else if !ready {
                p.refused { "The gateways are not configured yet (no server key): ask your administrator." }
            } @else if devices.len() as u64 >= limit as u64 {
                p { "You have " (devices.len()) " of the " (limit) " devices your groups allow: remove one to add another." }
            } @else {
                h2 { "Add a device" }
                form id="enroll" {
                    label { "Name " input name="name" id="device-name" required maxlength="64" placeholder="e.g. laptop"; }
                    " "
                    button type="submit" id="add-device" { "Add" }
                }
                p { small { "Your device's key is made in this browser and never leaves it." } }
            }
            div id="result" hidden {
                h2 { "Your configuration" }
                p { "Import it into the WireGuard app. Its private key exists only in this page: download the file now." }
                p { a.button id="download" download="anygate.conf" { "Download" } }
                pre id="config" {}
            }
            p id="error" .refused hidden {}
            p { button.quiet id="sign-out" { "Sign out" } }
            script src="/portal/portal.js" {}
        },
    )
}
