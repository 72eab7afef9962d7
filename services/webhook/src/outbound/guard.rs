//! The SSRF guard: outbound endpoints may not reach loopback, private,
//! link-local, unique-local, shared (CGNAT), unspecified, multicast or cloud
//! metadata addresses, unless the configured allowlist names the host, the
//! address or a range holding it.
//!
//! It runs at registration (the URL's host, resolved) and again at every
//! attempt, where it sits inside the HTTP client's DNS resolver: the
//! addresses it lets through are the only ones the client can connect to,
//! so a name that resolves differently between the check and the
//! connection (DNS rebinding) gains nothing. IP-literal URLs never reach a
//! resolver and are checked before the request.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// What the guard refused, carried through the HTTP client's error chain.
#[derive(Debug, Clone, thiserror::Error)]
#[error("address refused by SSRF guard: {0}")]
pub struct Refused(pub String);

/// An allowlist entry.
#[derive(Debug, Clone)]
enum Allowed {
    Host(String),
    Net(IpAddr, u8),
}

/// The guard with its allowlist.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    allowed: Arc<Vec<Allowed>>,
}

impl Guard {
    /// A guard exempting the `webhook_ssrf_allowlist` entries.
    pub fn new(entries: &[String]) -> Self {
        let allowed = entries
            .iter()
            .map(|entry| entry.trim().to_ascii_lowercase())
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                let (addr, bits) = match entry.split_once('/') {
                    Some((addr, bits)) => (addr.to_owned(), bits.parse().ok()),
                    None => (entry.trim_matches(['[', ']']).to_owned(), None),
                };
                match addr.parse::<IpAddr>() {
                    Ok(ip) => {
                        let full = if ip.is_ipv4() { 32 } else { 128 };
                        Allowed::Net(ip, bits.unwrap_or(full).min(full))
                    }
                    Err(_) => Allowed::Host(entry),
                }
            })
            .collect();
        Self { allowed: Arc::new(allowed) }
    }

    /// Whether the allowlist names this host.
    pub fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim_matches(['[', ']']).to_ascii_lowercase();
        self.allowed.iter().any(|a| matches!(a, Allowed::Host(h) if *h == host))
    }

    /// Whether the allowlist holds this address.
    fn addr_allowed(&self, ip: IpAddr) -> bool {
        self.allowed.iter().any(|a| match a {
            Allowed::Net(net, bits) => in_net(ip, *net, *bits),
            Allowed::Host(_) => false,
        })
    }

    /// Refuses `ip` unless it is public or allowlisted.
    pub fn check_addr(&self, ip: IpAddr) -> Result<(), Refused> {
        match forbidden(ip) {
            Some(kind) if !self.addr_allowed(ip) => Err(Refused(format!("{ip} is a {kind} address"))),
            _ => Ok(()),
        }
    }

    /// Resolves `host` and keeps the addresses the guard allows; refused
    /// when none is left (an allowlisted host keeps every address).
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, Refused> {
        let bare = host.trim_matches(['[', ']']);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return self.check_addr(ip).map(|()| vec![SocketAddr::new(ip, port)]);
        }
        let found: Vec<SocketAddr> = tokio::net::lookup_host((bare, port))
            .await
            .map_err(|e| Refused(format!("{host} does not resolve: {e}")))?
            .collect();
        if found.is_empty() {
            return Err(Refused(format!("{host} does not resolve")));
        }
        if self.host_allowed(bare) {
            return Ok(found);
        }
        // One forbidden address refuses the name: a host that resolves
        // partly inside the network is not a public endpoint.
        for addr in &found {
            self.check_addr(addr.ip()).map_err(|Refused(why)| Refused(format!("{host}: {why}")))?;
        }
        Ok(found)
    }
}

impl Resolve for Guard {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // Port 0: the client puts the URL's port in.
            let addrs = Guard::resolve(&guard, &host, 0).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Whether `ip` lies in `net`/`bits`.
fn in_net(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (canonical(ip), canonical(net)) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = if bits == 0 { 0 } else { u32::MAX << (32 - u32::from(bits.min(32))) };
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = if bits == 0 { 0 } else { u128::MAX << (128 - u32::from(bits.min(128))) };
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// IPv4-mapped and IPv4-compatible IPv6 addresses as the IPv4 they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Which kind of internal address `ip` is, if any.
fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, d] = ip.octets();
    if ip == Ipv4Addr::new(169, 254, 169, 254) || ip == Ipv4Addr::new(100, 100, 100, 200) {
        Some("cloud metadata")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if a == 100 && (64..128).contains(&b) {
        Some("shared (carrier-grade NAT)")
    } else if ip.is_unspecified() || a == 0 {
        Some("unspecified")
    } else if ip.is_broadcast() || ip.is_multicast() || a >= 240 {
        Some("broadcast, multicast or reserved")
    } else if a == 192 && b == 0 && c == 0 && d < 8 {
        Some("special-purpose")
    } else {
        None
    }
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        Some("cloud metadata")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if first & 0xffc0 == 0xfe80 {
        Some("link-local")
    } else if first & 0xfe00 == 0xfc00 {
        Some("unique-local")
    } else if first & 0xffc0 == 0xfec0 {
        Some("site-local")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if first == 0x64 && ip.segments()[1] == 0xff9b {
        // NAT64: the IPv4 address it embeds decides.
        let [.., a, b, c, d] = ip.octets();
        forbidden_v4(Ipv4Addr::new(a, b, c, d)).map(|_| "NAT64 of an internal")
    } else {
        None
    }
}
