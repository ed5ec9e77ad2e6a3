//! A real browser for the tests: Debian's chromium, headless, driven over
//! WebDriver (chromedriver) with fantoccini.

use crate::harness::{eventually, free_port};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A chromedriver process and one browser session on it. Both end on drop.
pub struct Browser {
    pub rt: tokio::runtime::Runtime,
    pub client: Client,
    driver: Child,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let c = self.client.clone();
        let _ = self
            .rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(10), c.close()).await });
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Browser {
    /// Starts chromedriver on a free loopback port and a headless chromium
    /// with its profile under `dir`. The portal's certificate is the test
    /// CA's, which this browser does not know: certificate errors are
    /// accepted (the page is still https, a secure context for WebCrypto).
    pub fn start(dir: &Path) -> Browser {
        let port = free_port();
        let log = std::fs::File::create(dir.join("chromedriver.log")).unwrap();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("chromedriver (apt-get install chromium-driver)");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let profile = dir.join("chromium-profile");
        let caps = json!({
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                // The binary itself, not Debian's wrapper script.
                "binary": "/usr/lib/chromium/chromium",
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--window-size=1000,900",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        });
        let caps = caps.as_object().unwrap().clone();
        let client = eventually("chromedriver answers", Duration::from_secs(20), || {
            rt.block_on(async {
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(caps.clone())
                    .connect(&url)
                    .await
                    .ok()
            })
        });
        Browser { rt, client, driver }
    }

    pub fn goto(&self, url: &str) {
        self.rt
            .block_on(self.client.goto(url))
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// The text of the element `css`, waiting up to 15 s for it.
    pub fn text(&self, css: &str) -> String {
        self.rt.block_on(async {
            let el = self.wait(css).await;
            el.text().await.unwrap()
        })
    }

    pub fn click(&self, css: &str) {
        self.rt.block_on(async {
            let el = self.wait(css).await;
            el.click()
                .await
                .unwrap_or_else(|e| panic!("click {css}: {e}"));
        })
    }

    pub fn type_into(&self, css: &str, text: &str) {
        self.rt.block_on(async {
            let el = self.wait(css).await;
            el.clear().await.unwrap();
            el.send_keys(text).await.unwrap();
        })
    }

    /// Whether the element `css` exists now (no wait).
    pub fn has(&self, css: &str) -> bool {
        self.rt
            .block_on(self.client.find(Locator::Css(css)))
            .is_ok()
    }

    /// Runs `script` in the page and returns its value.
    pub fn eval(&self, script: &str) -> serde_json::Value {
        self.rt
            .block_on(self.client.execute(script, vec![]))
            .unwrap_or_else(|e| panic!("{script}: {e}"))
    }

    pub fn accept_alert(&self) {
        self.rt.block_on(async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while self.client.accept_alert().await.is_err() {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no dialog to accept"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    }

    pub fn source(&self) -> String {
        self.rt.block_on(self.client.source()).unwrap()
    }

    pub fn screenshot(&self, to: &Path) {
        let png = self.rt.block_on(self.client.screenshot()).unwrap();
        std::fs::write(to, png).unwrap();
    }

    async fn wait(&self, css: &str) -> fantoccini::elements::Element {
        let found = self
            .client
            .wait()
            .at_most(Duration::from_secs(15))
            .for_element(Locator::Css(css))
            .await;
        match found {
            Ok(el) => el,
            Err(e) => {
                let page = self.client.source().await.unwrap_or_default();
                let url = self
                    .client
                    .current_url()
                    .await
                    .map(|u| u.to_string())
                    .unwrap_or_default();
                panic!("no {css} within 15 s ({e}) at {url}:\n{page}");
            }
        }
    }
}

/// Signs in at the provider's form the browser is on (oidc-provider's
/// development sign-in: any password for a known user).
pub fn provider_sign_in(b: &Browser, login: &str) {
    b.type_into("input[name=login]", login);
    b.type_into("input[name=password]", "any");
    b.click("button[type=submit]");
}
