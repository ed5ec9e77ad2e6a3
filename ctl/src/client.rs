//! Connection to the cluster: tries each `--endpoint` in turn, follows the
//! leader address a node returns with `Unavailable`, and retries briefly
//! while an election is in progress, so the user never has to find the
//! leader.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

pub const LEADER_ADDR: &str = "x-anygate-leader";
pub const ACTOR_HEADER: &str = "x-anygate-actor";
pub const REQUEST_ID_HEADER: &str = "x-anygate-request-id";

pub struct Client {
    endpoints: Vec<String>,
    actor: String,
    pub timeout: Duration,
    /// Every attempt of one `call` carries the same request id, so a write
    /// retried after a leader change is applied once.
    nonce: String,
    seq: AtomicU64,
    current_id: Mutex<String>,
}

fn channel(addr: &str) -> Result<Channel, Status> {
    let uri = if addr.starts_with("http") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    Ok(Endpoint::from_shared(uri)
        .map_err(|e| Status::invalid_argument(format!("endpoint {addr:?}: {e}")))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .connect_lazy())
}

impl Client {
    pub fn new(endpoints: Vec<String>, actor: String, timeout: Duration) -> Client {
        let mut b = [0u8; 12];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
        let nonce = b.iter().map(|x| format!("{x:02x}")).collect();
        Client {
            endpoints,
            actor,
            timeout,
            nonce,
            seq: AtomicU64::new(0),
            current_id: Mutex::new(String::new()),
        }
    }

    /// A request with the actor header and a deadline.
    pub fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Ok(v) = self.actor.parse() {
            r.metadata_mut().insert(ACTOR_HEADER, v);
        }
        if let Ok(v) = self.current_id.lock().expect("request id lock").parse() {
            r.metadata_mut().insert(REQUEST_ID_HEADER, v);
        }
        r.set_timeout(self.timeout);
        r
    }

    /// Run `f` against the cluster: first endpoint that answers, following
    /// leader hints, retrying `Unavailable` until the deadline.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T, Status>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = Instant::now() + self.timeout;
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        *self.current_id.lock().expect("request id lock") = format!("{}-{n}", self.nonce);
        let mut last = Status::unavailable("no endpoint given");
        let mut backoff = Duration::from_millis(50);
        loop {
            for ep in &self.endpoints {
                let mut addr = ep.clone();
                for _hop in 0..3 {
                    match f(channel(&addr)?).await {
                        Ok(r) => return Ok(r.into_inner()),
                        Err(s) if s.code() == Code::Unavailable => {
                            let hint = s
                                .metadata()
                                .get(LEADER_ADDR)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string);
                            last = s;
                            match hint {
                                Some(h) if h != addr => addr = h,
                                _ => break,
                            }
                        }
                        Err(s) => return Err(s),
                    }
                }
            }
            if Instant::now() + backoff >= deadline {
                return Err(last);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }
}
