// anygate portal: makes the device's WireGuard key pair in this browser
// (WebCrypto X25519), sends only the public key, and puts the private key
// into the config the portal returns. The private key never leaves the
// page.
"use strict";

const csrf = document.querySelector('meta[name="csrf-token"]')?.content;

function b64(bytes) {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s);
}

async function keyPair() {
  const kp = await crypto.subtle.generateKey({ name: "X25519" }, true, ["deriveBits"]);
  // PKCS#8 of an X25519 key ends with the 32-byte private key.
  const pkcs8 = new Uint8Array(await crypto.subtle.exportKey("pkcs8", kp.privateKey));
  const pub = new Uint8Array(await crypto.subtle.exportKey("raw", kp.publicKey));
  return { priv: b64(pkcs8.slice(-32)), pub: b64(pub) };
}

function showError(msg) {
  const e = document.getElementById("error");
  e.textContent = msg;
  e.hidden = false;
}

async function post(url, body) {
  const r = await fetch(url, {
    method: "POST",
    credentials: "same-origin",
    headers: { "content-type": "application/json", "x-csrf-token": csrf },
    body: JSON.stringify(body),
  });
  if (!r.ok) {
    let msg = `${r.status} ${r.statusText}`;
    try { msg = (await r.json()).message || msg; } catch (_) { /* not JSON */ }
    throw new Error(msg);
  }
  return r.status === 204 ? null : r.json();
}

const form = document.getElementById("enroll");
if (form) {
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    document.getElementById("error").hidden = true;
    const button = document.getElementById("add-device");
    button.disabled = true;
    try {
      const name = document.getElementById("device-name").value.trim();
      const { priv, pub } = await keyPair();
      const res = await post("/portal/devices", { name, public_key: pub });
      const config = res.config.replace(res.private_key_line, "PrivateKey = " + priv);
      document.getElementById("config").textContent = config;
      const link = document.getElementById("download");
      link.href = URL.createObjectURL(new Blob([config], { type: "text/plain" }));
      link.download = name.replace(/[^A-Za-z0-9_.-]+/g, "-") + ".conf";
      document.getElementById("result").hidden = false;
      // The list above was rendered before this device existed.
      const none = document.getElementById("no-devices");
      if (none) none.textContent = `${name} was added: its configuration is below.`;
      form.hidden = true;
    } catch (e) {
      showError(e.message);
      button.disabled = false;
    }
  });
}

for (const b of document.querySelectorAll("button.remove")) {
  b.addEventListener("click", async () => {
    if (!confirm(`Remove ${b.dataset.device}? It loses access at once.`)) return;
    try {
      await post("/portal/devices/remove", { name: b.dataset.device });
      location.reload();
    } catch (e) {
      showError(e.message);
    }
  });
}

document.getElementById("sign-out")?.addEventListener("click", async () => {
  try { await post("/portal/logout", {}); } finally { location.assign("/portal"); }
});
