//! Where `call http` and `call openapi` may go: allow and deny lists of networks (CIDR) and
//! host names, server-wide and per namespace. Cloud metadata endpoints are denied by default.
//!
//! Enforced where it cannot be sidestepped: a DNS resolver given to the HTTP client refuses a
//! name whose addresses are denied (so a name pointing at 169.254.169.254 is caught at connect
//! time, rebinding included), a URL with a literal address is checked before the request and
//! at every redirect (the redirect policy checks each hop; redirected names go through the
//! same resolver). A namespace with its own policy gets its own client.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// A network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn parse(s: &str) -> Result<IpNet, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(IpNet { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) are their IPv4 address.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.prefix)
                };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.prefix)
                };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// One entry of a list: a network, or a host name (`*.example.com` matches its subdomains).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Net(IpNet),
    Host(String),
}

impl Target {
    pub fn parse(s: &str) -> Result<Target, String> {
        let t = s.trim();
        if t.is_empty() {
            return Err("an empty egress entry".into());
        }
        if let Ok(n) = IpNet::parse(t) {
            return Ok(Target::Net(n));
        }
        if t.contains('/') {
            return Err(format!(
                "{t:?} is not a network (a.b.c.d/len) or a host name"
            ));
        }
        let name = t.to_ascii_lowercase();
        let bare = name.strip_prefix("*.").unwrap_or(&name);
        if bare.is_empty()
            || !bare
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.')
        {
            return Err(format!("{t:?} is not a host name or network"));
        }
        Ok(Target::Host(name))
    }

    fn matches_host(&self, host: &str) -> bool {
        match self {
            Target::Host(p) => match p.strip_prefix("*.") {
                Some(suffix) => host.ends_with(&format!(".{suffix}")),
                None => p == host,
            },
            Target::Net(_) => false,
        }
    }

    fn matches_ip(&self, ip: IpAddr) -> bool {
        matches!(self, Target::Net(n) if n.contains(ip))
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Net(n) => write!(f, "{}/{}", n.addr, n.prefix),
            Target::Host(h) => f.write_str(h),
        }
    }
}

/// Cloud metadata services (AWS, GCP, Azure, Alibaba, ...) and link-local addresses.
pub const METADATA: &[&str] = &[
    "169.254.0.0/16",
    "fe80::/10",
    "fd00:ec2::254",
    "100.100.100.200",
    "metadata.google.internal",
    "metadata.goog",
];

/// One policy: a call is refused when its host or one of its addresses matches `deny`, or when
/// `allow` is not empty and the host matches no entry of it (by name, or every address by
/// network).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub deny: Vec<Target>,
    pub allow: Vec<Target>,
}

impl Policy {
    /// The default: cloud metadata denied, everything else allowed.
    pub fn standard() -> Policy {
        Policy {
            deny: METADATA
                .iter()
                .map(|s| Target::parse(s).expect("built-in entries parse"))
                .collect(),
            allow: Vec::new(),
        }
    }

    pub fn parse(deny: &[String], allow: &[String]) -> Result<Policy, String> {
        let list = |v: &[String]| {
            v.iter()
                .map(|s| Target::parse(s))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Policy {
            deny: list(deny)?,
            allow: list(allow)?,
        })
    }

    /// This policy narrowed by a namespace's: denials add up, the namespace's allow list (when
    /// it has one) replaces the server's.
    pub fn with(&self, ns: &Policy) -> Policy {
        let mut deny = self.deny.clone();
        deny.extend(ns.deny.iter().cloned());
        Policy {
            deny,
            allow: if ns.allow.is_empty() {
                self.allow.clone()
            } else {
                ns.allow.clone()
            },
        }
    }

    /// Checks a host name (lower case) and the addresses it resolved to.
    pub fn check(&self, host: &str, ips: &[IpAddr]) -> Result<(), String> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if let Some(t) = self.deny.iter().find(|t| t.matches_host(&host)) {
            return Err(format!("{host} is denied by the egress policy ({t})"));
        }
        for ip in ips {
            if let Some(t) = self.deny.iter().find(|t| t.matches_ip(*ip)) {
                return Err(format!(
                    "{host} ({ip}) is denied by the egress policy ({t}{})",
                    if METADATA.contains(&t.to_string().as_str())
                        || matches!(t, Target::Net(n) if n.contains(IpAddr::from([169, 254, 169, 254])))
                    {
                        ": cloud metadata and link-local addresses"
                    } else {
                        ""
                    }
                ));
            }
        }
        if self.allow.is_empty() || self.allow.iter().any(|t| t.matches_host(&host)) {
            return Ok(());
        }
        if !ips.is_empty()
            && ips
                .iter()
                .all(|ip| self.allow.iter().any(|t| t.matches_ip(*ip)))
        {
            return Ok(());
        }
        Err(format!("{host} is not in the egress policy's allow list"))
    }

    /// Checks a URL's host: a literal address fully, a name by its name (its addresses are
    /// checked by the resolver at connect time).
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), String> {
        let Some(host) = url.host_str() else {
            return Ok(());
        };
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return self.check(bare, &[ip]);
        }
        let d = host.to_ascii_lowercase();
        if let Some(t) = self.deny.iter().find(|t| t.matches_host(&d)) {
            return Err(format!("{d} is denied by the egress policy ({t})"));
        }
        Ok(())
    }
}

/// The workflow error of a refused call: an authorization error (403) a `try` can catch.
pub fn denied(detail: impl Into<String>) -> kflow_effects::WfError {
    kflow_effects::WfError::standard(
        kflow_effects::errors::AUTHORIZATION,
        403,
        "Egress denied",
        detail,
    )
}

/// The server's policy and the namespaces' own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressConfig {
    pub default: Policy,
    pub namespaces: HashMap<String, Policy>,
}

impl Default for EgressConfig {
    fn default() -> Self {
        EgressConfig {
            default: Policy::standard(),
            namespaces: HashMap::new(),
        }
    }
}

impl EgressConfig {
    pub fn for_namespace(&self, ns: &str) -> Policy {
        match self.namespaces.get(ns) {
            Some(p) => self.default.with(p),
            None => self.default.clone(),
        }
    }
}

/// The HTTP client's resolver: resolves with the system, refuses a name the policy denies.
pub(crate) struct Resolver {
    pub(crate) policy: Arc<Policy>,
}

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let ips: Vec<IpAddr> = addrs.iter().map(|a| a.ip()).collect();
            policy
                .check(&host, &ips)
                .map_err(|m| -> Box<dyn std::error::Error + Send + Sync> { m.into() })?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_and_names_match() {
        let n = IpNet::parse("10.0.0.0/8").unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(IpNet::parse("10.0.0.0/33").is_err());
        assert!(
            IpNet::parse("fe80::/10")
                .unwrap()
                .contains("fe80::1".parse().unwrap())
        );
        assert!(
            Target::parse("*.Example.com")
                .unwrap()
                .matches_host("api.example.com")
        );
        assert!(
            !Target::parse("*.example.com")
                .unwrap()
                .matches_host("example.com")
        );
        assert!(Target::parse("exa mple").is_err());
    }

    #[test]
    fn the_standard_policy_denies_metadata_only() {
        let p = Policy::standard();
        let ip = |s: &str| vec![s.parse::<IpAddr>().unwrap()];
        assert!(p.check("169.254.169.254", &ip("169.254.169.254")).is_err());
        assert!(
            p.check("evil.example", &ip("169.254.169.254")).is_err(),
            "a name pointing there"
        );
        assert!(p.check("metadata.google.internal", &[]).is_err());
        assert!(p.check("example.com", &ip("93.184.216.34")).is_ok());
        assert!(p.check("localhost", &ip("127.0.0.1")).is_ok());
    }

    #[test]
    fn a_namespace_narrows_the_server_policy() {
        let server = Policy::standard();
        let ns = Policy::parse(
            &["10.0.0.0/8".into()],
            &["*.corp.example".into(), "192.168.0.0/16".into()],
        )
        .unwrap();
        let p = server.with(&ns);
        let ip = |s: &str| vec![s.parse::<IpAddr>().unwrap()];
        assert!(p.check("api.corp.example", &ip("203.0.113.5")).is_ok());
        assert!(p.check("db", &ip("192.168.1.2")).is_ok());
        assert!(
            p.check("api.corp.example", &ip("10.0.0.5")).is_err(),
            "denial wins"
        );
        assert!(
            p.check("example.com", &ip("203.0.113.5")).is_err(),
            "not allowed"
        );
        assert!(p.check("api.corp.example", &ip("169.254.169.254")).is_err());
    }
}
