//! gobgpd over its gRPC API (our subset of GoBGP v3, `proto/gobgp/`): start
//! the BGP instance, manage neighbors, add and delete our paths, watch
//! session state. Path building is pure and unit-tested; the wire
//! compatibility is tested against a real gobgpd (t08_bgp).

use anygate_proto::gobgp as api;
use anygate_proto::gobgp::gobgp_api_client::GobgpApiClient;
use prost::Message;
use prost_types::Any;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tonic::transport::Channel;

/// RFC 8326 GRACEFUL_SHUTDOWN (65535:0).
pub const GRACEFUL_SHUTDOWN: u32 = 0xFFFF_0000;

/// One route this node originates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub prefix: IpAddr,
    pub prefix_len: u8,
    pub communities: Vec<u32>,
    pub med: Option<u32>,
    /// Extra copies of our AS in front of the path (gobgpd adds its own on eBGP).
    pub prepend: Vec<u32>,
}

fn any<M: Message>(name: &str, m: &M) -> Any {
    Any {
        type_url: api::type_url(name),
        value: m.encode_to_vec(),
    }
}

pub fn family(v6: bool) -> api::Family {
    api::Family {
        afi: if v6 {
            api::family::Afi::Ip6
        } else {
            api::family::Afi::Ip
        } as i32,
        safi: api::family::Safi::Unicast as i32,
    }
}

impl Route {
    /// The GoBGP `Path` announcing this route with next hop self (an
    /// unspecified next hop: gobgpd puts the session's local address).
    pub fn to_path(&self) -> api::Path {
        let v6 = self.prefix.is_ipv6();
        let nlri = any(
            "IPAddressPrefix",
            &api::IpAddressPrefix {
                prefix_len: self.prefix_len as u32,
                prefix: self.prefix.to_string(),
            },
        );
        let mut pattrs = vec![any("OriginAttribute", &api::OriginAttribute { origin: 0 })];
        pattrs.push(any(
            "AsPathAttribute",
            &api::AsPathAttribute {
                segments: if self.prepend.is_empty() {
                    vec![]
                } else {
                    vec![api::AsSegment {
                        r#type: api::as_segment::Type::AsSequence as i32,
                        numbers: self.prepend.clone(),
                    }]
                },
            },
        ));
        if v6 {
            pattrs.push(any(
                "MpReachNLRIAttribute",
                &api::MpReachNlriAttribute {
                    family: Some(family(true)),
                    next_hops: vec!["::".into()],
                    nlris: vec![nlri.clone()],
                },
            ));
        } else {
            pattrs.push(any(
                "NextHopAttribute",
                &api::NextHopAttribute {
                    next_hop: "0.0.0.0".into(),
                },
            ));
        }
        if let Some(med) = self.med {
            pattrs.push(any(
                "MultiExitDiscAttribute",
                &api::MultiExitDiscAttribute { med },
            ));
        }
        if !self.communities.is_empty() {
            pattrs.push(any(
                "CommunitiesAttribute",
                &api::CommunitiesAttribute {
                    communities: self.communities.clone(),
                },
            ));
        }
        api::Path {
            nlri: Some(nlri),
            pattrs,
            family: Some(family(v6)),
            ..Default::default()
        }
    }

    pub fn cidr(&self) -> String {
        format!("{}/{}", self.prefix, self.prefix_len)
    }
}

/// A path as gobgpd lists it: prefix and the attributes we care about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub cidr: String,
    pub communities: Vec<u32>,
    pub med: Option<u32>,
    /// Originated here (not learned from a neighbor).
    pub local: bool,
}

fn decode_listed(cidr: &str, p: &api::Path) -> Listed {
    let mut l = Listed {
        cidr: cidr.to_string(),
        communities: vec![],
        med: None,
        local: p.neighbor_ip.is_empty() || p.neighbor_ip == "<nil>",
    };
    for a in &p.pattrs {
        if a.type_url == api::type_url("CommunitiesAttribute") {
            if let Ok(c) = api::CommunitiesAttribute::decode(a.value.as_slice()) {
                l.communities = c.communities;
            }
        } else if a.type_url == api::type_url("MultiExitDiscAttribute") {
            if let Ok(m) = api::MultiExitDiscAttribute::decode(a.value.as_slice()) {
                l.med = Some(m.med);
            }
        }
    }
    l
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub address: String,
    pub peer_as: u32,
    pub established: bool,
    pub state: String,
}

fn session_of(p: &api::Peer) -> Option<Session> {
    let st = p.state.as_ref()?;
    // gobgpd fills the address in `conf` or in `state` depending on the
    // call, and prints a missing one as "<nil>".
    let addr = [
        p.conf.as_ref().map(|c| c.neighbor_address.as_str()),
        Some(st.neighbor_address.as_str()),
    ]
    .into_iter()
    .flatten()
    .find(|a| !a.is_empty() && *a != "<nil>")?
    .to_string();
    let state = api::peer_state::SessionState::try_from(st.session_state)
        .map(|s| s.as_str_name().to_lowercase())
        .unwrap_or_else(|_| "unknown".into());
    Some(Session {
        address: addr,
        peer_as: st.peer_asn,
        established: st.session_state == api::peer_state::SessionState::Established as i32,
        state,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum BgpError {
    #[error("cannot reach gobgpd at {0}: {1}")]
    Connect(SocketAddr, String),
    #[error("gobgpd {call}: {status}")]
    Call {
        call: &'static str,
        status: tonic::Status,
    },
}

fn call(call: &'static str) -> impl FnOnce(tonic::Status) -> BgpError {
    move |status| BgpError::Call { call, status }
}

#[derive(Clone)]
pub struct Gobgp {
    c: GobgpApiClient<Channel>,
}

/// Every call gets a deadline: a hung gobgpd must not hang the node.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

fn req<T>(m: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(m);
    r.set_timeout(CALL_TIMEOUT);
    r
}

impl Gobgp {
    pub async fn connect(addr: SocketAddr) -> Result<Gobgp, BgpError> {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| BgpError::Connect(addr, e.to_string()))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| BgpError::Connect(addr, e.to_string()))?;
        Ok(Gobgp {
            c: GobgpApiClient::new(ch),
        })
    }

    /// The running instance's AS (0 when BGP is not started).
    pub async fn get_asn(&self) -> Result<u32, BgpError> {
        let r = self
            .c
            .clone()
            .get_bgp(req(api::GetBgpRequest {}))
            .await
            .map_err(call("GetBgp"))?;
        Ok(r.into_inner().global.map(|g| g.asn).unwrap_or(0))
    }

    pub async fn start(&self, asn: u32, router_id: &str, listen_port: i32) -> Result<(), BgpError> {
        self.c
            .clone()
            .start_bgp(req(api::StartBgpRequest {
                global: Some(api::Global {
                    asn,
                    router_id: router_id.to_string(),
                    listen_port,
                    ..Default::default()
                }),
            }))
            .await
            .map_err(call("StartBgp"))?;
        Ok(())
    }

    pub async fn add_neighbor(
        &self,
        n: &crate::config::Neighbor,
        hold: u64,
        keepalive: u64,
        connect_retry: u64,
    ) -> Result<(), BgpError> {
        let v6 = n.address.is_ipv6();
        let peer = api::Peer {
            conf: Some(api::PeerConf {
                neighbor_address: n.address.to_string(),
                peer_asn: n.peer_as,
                auth_password: n.password.clone().unwrap_or_default(),
                description: "anygate uplink".into(),
                ..Default::default()
            }),
            ebgp_multihop: n.multihop_ttl.map(|t| api::EbgpMultihop {
                enabled: true,
                multihop_ttl: t as u32,
            }),
            timers: Some(api::Timers {
                config: Some(api::TimersConfig {
                    connect_retry,
                    hold_time: hold,
                    keepalive_interval: keepalive,
                    idle_hold_time_after_reset: 1,
                    ..Default::default()
                }),
                state: None,
            }),
            transport: n.local_address.map(|a| api::Transport {
                local_address: a.to_string(),
                ..Default::default()
            }),
            afi_safis: vec![api::AfiSafi {
                config: Some(api::AfiSafiConfig {
                    family: Some(family(v6)),
                    enabled: true,
                }),
                state: None,
            }],
            state: None,
        };
        self.c
            .clone()
            .add_peer(req(api::AddPeerRequest { peer: Some(peer) }))
            .await
            .map_err(call("AddPeer"))?;
        Ok(())
    }

    pub async fn delete_neighbor(&self, address: &str) -> Result<(), BgpError> {
        self.c
            .clone()
            .delete_peer(req(api::DeletePeerRequest {
                address: address.to_string(),
                interface: String::new(),
            }))
            .await
            .map_err(call("DeletePeer"))?;
        Ok(())
    }

    pub async fn sessions(&self) -> Result<Vec<Session>, BgpError> {
        let mut s = self
            .c
            .clone()
            .list_peer(req(api::ListPeerRequest::default()))
            .await
            .map_err(call("ListPeer"))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(r) = s.message().await.map_err(call("ListPeer"))? {
            if let Some(x) = r.peer.as_ref().and_then(session_of) {
                out.push(x);
            }
        }
        Ok(out)
    }

    pub async fn add_path(&self, r: &Route) -> Result<(), BgpError> {
        self.c
            .clone()
            .add_path(req(api::AddPathRequest {
                table_type: api::TableType::Global as i32,
                vrf_id: String::new(),
                path: Some(r.to_path()),
            }))
            .await
            .map_err(call("AddPath"))?;
        Ok(())
    }

    /// Withdraw: delete the path by its content (prefix and family).
    pub async fn delete_path(&self, r: &Route) -> Result<(), BgpError> {
        let p = r.to_path();
        self.c
            .clone()
            .delete_path(req(api::DeletePathRequest {
                table_type: api::TableType::Global as i32,
                vrf_id: String::new(),
                family: p.family,
                path: Some(p),
                uuid: vec![],
            }))
            .await
            .map_err(call("DeletePath"))?;
        Ok(())
    }

    /// Paths in gobgpd's global RIB for one family.
    pub async fn list_paths(&self, v6: bool) -> Result<Vec<Listed>, BgpError> {
        let mut s = self
            .c
            .clone()
            .list_path(req(api::ListPathRequest {
                table_type: api::TableType::Global as i32,
                name: String::new(),
                family: Some(family(v6)),
                prefixes: vec![],
            }))
            .await
            .map_err(call("ListPath"))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(r) = s.message().await.map_err(call("ListPath"))? {
            if let Some(d) = r.destination {
                for p in &d.paths {
                    out.push(decode_listed(&d.prefix, p));
                }
            }
        }
        Ok(out)
    }

    /// A stream of session changes (INIT for every neighbor first, then
    /// STATE on each transition). Ends when gobgpd goes away.
    pub async fn watch_sessions(
        &self,
    ) -> Result<impl futures::Stream<Item = Session> + Send + 'static, BgpError> {
        let s = self
            .c
            .clone()
            .watch_event(api::WatchEventRequest {
                peer: Some(api::watch_event_request::Peer {}),
            })
            .await
            .map_err(call("WatchEvent"))?
            .into_inner();
        use futures::StreamExt;
        Ok(s.take_while(|r| futures::future::ready(r.is_ok()))
            .filter_map(|r| {
                futures::future::ready(match r.ok().and_then(|e| e.event) {
                    Some(api::watch_event_response::Event::Peer(p)) => {
                        p.peer.as_ref().and_then(session_of)
                    }
                    None => None,
                })
            }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unpack<M: Message + Default>(a: &Any) -> M {
        M::decode(a.value.as_slice()).unwrap()
    }

    #[test]
    fn v4_path_has_gobgp_type_urls_and_next_hop_self() {
        let r = Route {
            prefix: "198.51.100.1".parse().unwrap(),
            prefix_len: 32,
            communities: vec![(65010 << 16) | 100],
            med: Some(50),
            prepend: vec![65010, 65010],
        };
        let p = r.to_path();
        let nlri = p.nlri.as_ref().unwrap();
        assert_eq!(nlri.type_url, "type.googleapis.com/apipb.IPAddressPrefix");
        let n: api::IpAddressPrefix = unpack(nlri);
        assert_eq!((n.prefix.as_str(), n.prefix_len), ("198.51.100.1", 32));
        let urls: Vec<_> = p.pattrs.iter().map(|a| a.type_url.as_str()).collect();
        assert_eq!(
            urls,
            [
                "type.googleapis.com/apipb.OriginAttribute",
                "type.googleapis.com/apipb.AsPathAttribute",
                "type.googleapis.com/apipb.NextHopAttribute",
                "type.googleapis.com/apipb.MultiExitDiscAttribute",
                "type.googleapis.com/apipb.CommunitiesAttribute",
            ]
        );
        let nh: api::NextHopAttribute = unpack(&p.pattrs[2]);
        assert_eq!(nh.next_hop, "0.0.0.0");
        let asp: api::AsPathAttribute = unpack(&p.pattrs[1]);
        assert_eq!(asp.segments[0].numbers, [65010, 65010]);
        assert_eq!(p.family.unwrap().afi, api::family::Afi::Ip as i32);
        let l = decode_listed("198.51.100.1/32", &p);
        assert_eq!(
            (l.med, l.communities.clone(), l.local),
            (Some(50), vec![(65010 << 16) | 100], true)
        );
    }

    #[test]
    fn v6_path_uses_mp_reach() {
        let r = Route {
            prefix: "2001:db8::1".parse().unwrap(),
            prefix_len: 128,
            communities: vec![],
            med: None,
            prepend: vec![],
        };
        let p = r.to_path();
        assert_eq!(p.family.unwrap().afi, api::family::Afi::Ip6 as i32);
        let mp = p
            .pattrs
            .iter()
            .find(|a| a.type_url.ends_with("MpReachNLRIAttribute"))
            .unwrap();
        let mp: api::MpReachNlriAttribute = unpack(mp);
        assert_eq!(mp.next_hops, ["::"]);
        assert_eq!(mp.nlris.len(), 1);
        assert!(p
            .pattrs
            .iter()
            .all(|a| !a.type_url.ends_with("NextHopAttribute")));
        assert_eq!(r.cidr(), "2001:db8::1/128");
    }
}
