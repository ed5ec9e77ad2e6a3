//! Connection to the cluster: tries each `--endpoint` in turn, follows the
//! leader address a node returns with `Unavailable`, and retries briefly
//! while an election is in progress, so the user never has to find the
//! leader.

use anygate_proto::tls::Tls;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::{Code, Status};

pub const LEADER_ADDR: &str = "x-anygate-leader";
pub const ACTOR_HEADER: &str = "x-anygate-actor";
pub const REQUEST_ID_HEADER: &str = "x-anygate-request-id";
/// Largest answer anygatectl accepts (tonic's default is 4 MiB: about
/// 30,000 peers or 15,000 audit entries). Peer listings and backups are
/// streamed in pages and need far less.
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// A gRPC client of type `$client` on channel `$ch` that accepts answers
/// up to [`MAX_MESSAGE`].
#[macro_export]
macro_rules! grpc {
    ($client:ident, $ch:expr) => {
        $client::new($ch).max_decoding_message_size($crate::client::MAX_MESSAGE)
    };
}

pub struct Client {
    endpoints: Vec<String>,
    tls: Option<Arc<Tls>>,
    actor: String,
    pub timeout: Duration,
    /// Every attempt of one `call` carries the same request id, so a write
    /// retried after a leader change is applied once.
    nonce: String,
    seq: AtomicU64,
    current_id: Mutex<String>,
}

impl Client {
    fn channel(&self, addr: &str) -> Result<Channel, Status> {
        anygate_proto::tls::channel(addr, self.tls.clone(), Duration::from_secs(2))
            .map_err(|e| Status::invalid_argument(e.to_string()))
    }

    /// `tls`: this operator's certificate (None: plaintext, insecure dev mode).
    pub fn new(
        endpoints: Vec<String>,
        tls: Option<Arc<Tls>>,
        actor: String,
        timeout: Duration,
    ) -> Client {
        let mut b = [0u8; 12];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
        let nonce = b.iter().map(|x| format!("{x:02x}")).collect();
        Client {
            endpoints,
            tls,
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

    /// A transport failure over TLS usually means the node refused our
    /// certificate (or we refused its): say which, in words.
    async fn explain(&self, addr: &str, s: Status) -> Status {
        let transport = matches!(
            s.code(),
            Code::Unknown | Code::Cancelled | Code::Unavailable
        );
        match &self.tls {
            Some(t) if transport => match anygate_proto::tls::probe(addr, t).await {
                Err(e) => Status::unauthenticated(format!("{addr}: TLS refused: {e}")),
                Ok(()) => s,
            },
            // Plaintext to a TLS node fails in the HTTP/2 layer, with
            // varying codes.
            None if s.message().contains("h2 protocol error")
                || s.message().contains("transport error") =>
            {
                Status::unavailable(format!(
                    "{addr}: {} (the node probably requires TLS: give --ca, --cert and --key)",
                    s.message()
                ))
            }
            _ => s,
        }
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
        let mut last_addr = String::new();
        let mut backoff = Duration::from_millis(50);
        loop {
            for ep in &self.endpoints {
                let mut addr = ep.clone();
                for _hop in 0..3 {
                    match f(self.channel(&addr)?).await {
                        Ok(r) => return Ok(r.into_inner()),
                        Err(s) if s.code() == Code::Unavailable => {
                            let hint = s
                                .metadata()
                                .get(LEADER_ADDR)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string);
                            last = s;
                            last_addr = addr.clone();
                            match hint {
                                Some(h) if h != addr => addr = h,
                                _ => break,
                            }
                        }
                        Err(s) => return Err(self.explain(&addr, s).await),
                    }
                }
            }
            if Instant::now() + backoff >= deadline {
                return Err(self.explain(&last_addr, last).await);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }
}
