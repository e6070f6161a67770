//! IPv4 subnets of the bridges incus-compose makes. Incus cannot pick a subnet itself on
//! every host (auto-selection fails when it cannot probe the routes), so each bridge gets one
//! explicitly: the compose `ipam.config[0].subnet` (gateway: `ipam.config[0].gateway`, else
//! the first address), or else a free /24 of 100.100.0.0/14 (inside the shared address space
//! 100.64.0.0/10, which is never routed on the internet), chosen from a start point derived
//! from the network's name and probing on past the subnets other networks already use.

use std::net::Ipv4Addr;

use sha2::{Digest, Sha256};

/// An IPv4 subnet with the bridge's (gateway) address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub gateway: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    /// `a.b.c.d/p`, with an optional gateway (default: network address + 1).
    pub fn parse(cidr: &str, gateway: Option<&str>) -> Result<Subnet, String> {
        let (addr, prefix) = cidr
            .split_once('/')
            .ok_or_else(|| format!("subnet {cidr:?} is not a.b.c.d/prefix"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("subnet {cidr:?}: only IPv4 subnets are supported"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| (8..=30).contains(p))
            .ok_or_else(|| format!("subnet {cidr:?}: the prefix must be between 8 and 30"))?;
        let network = u32::from(addr) & mask(prefix);
        let gateway = match gateway {
            Some(g) => {
                let g: Ipv4Addr = g
                    .parse()
                    .map_err(|_| format!("gateway {g:?} is not an IPv4 address"))?;
                if u32::from(g) & mask(prefix) != network {
                    return Err(format!("gateway {g} is not inside {cidr}"));
                }
                g
            }
            None => Ipv4Addr::from(network + 1),
        };
        Ok(Subnet { gateway, prefix })
    }

    /// A subnet from a bridge's `ipv4.address` (`10.0.0.1/24`, or a network address);
    /// `None` for anything else (`none`, `auto`, IPv6).
    pub fn from_address(address: &str) -> Option<Subnet> {
        Subnet::parse(address, None).ok().or_else(|| {
            let (a, p) = address.split_once('/')?;
            Some(Subnet {
                gateway: a.parse().ok()?,
                prefix: p.parse().ok().filter(|p| *p <= 32)?,
            })
        })
    }

    /// `ipv4.address` of the bridge: `gateway/prefix`.
    pub fn bridge_address(&self) -> String {
        format!("{}/{}", self.gateway, self.prefix)
    }

    /// The first and last host address (network and broadcast addresses left out).
    pub fn hosts(&self) -> (u32, u32) {
        let (a, b) = self.range();
        (a + 1, b.saturating_sub(1))
    }

    /// Whether `ip` is a host address of this subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let (a, b) = self.hosts();
        (a..=b).contains(&u32::from(ip))
    }

    fn range(&self) -> (u32, u32) {
        let start = u32::from(self.gateway) & mask(self.prefix);
        (start, start | !mask(self.prefix))
    }

    /// Whether two subnets share an address.
    pub fn overlaps(&self, other: &Subnet) -> bool {
        let (a0, a1) = self.range();
        let (b0, b1) = other.range();
        a0 <= b1 && b0 <= a1
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

/// A free /24 of 100.100.0.0/14 for network `name`, avoiding every subnet in `used`
/// (`ipv4.address` values such as `10.0.0.1/24`; others are ignored).
pub fn allocate_subnet(name: &str, used: &[String]) -> Option<Subnet> {
    let used: Vec<Subnet> = used
        .iter()
        .filter_map(|u| Subnet::from_address(u))
        .collect();
    let digest = Sha256::digest(name.as_bytes());
    let start = (u32::from(digest[0]) << 8 | u32::from(digest[1])) % 1024;
    let base = u32::from(Ipv4Addr::new(100, 100, 0, 0));
    (0..1024).find_map(|i| {
        let n = (start + i) % 1024;
        let candidate = Subnet {
            gateway: Ipv4Addr::from(base + (n << 8) + 1),
            prefix: 24,
        };
        (!used.iter().any(|u| u.overlaps(&candidate))).then_some(candidate)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipam_subnets_give_the_bridge_its_gateway() {
        let s = Subnet::parse("172.28.0.0/16", None).unwrap();
        assert_eq!(s.bridge_address(), "172.28.0.1/16");
        let s = Subnet::parse("10.5.0.0/24", Some("10.5.0.254")).unwrap();
        assert_eq!(s.bridge_address(), "10.5.0.254/24");
        assert!(Subnet::parse("10.5.0.0/24", Some("10.6.0.1")).is_err());
        assert!(Subnet::parse("fd00::/64", None).is_err());
    }

    #[test]
    fn allocated_subnets_avoid_used_ones_and_are_stable() {
        let a = allocate_subnet("ic12345-default", &[]).unwrap();
        assert_eq!(a, allocate_subnet("ic12345-default", &[]).unwrap());
        let b = allocate_subnet("ic12345-default", &[a.bridge_address()]).unwrap();
        assert_ne!(a, b);
        assert!(!a.overlaps(&b));
        let wide = allocate_subnet("x", &["100.100.0.1/14".to_string()]);
        assert_eq!(wide, None, "everything taken");
        let s = a.bridge_address();
        assert!(s.starts_with("100.10") && s.ends_with(".1/24"), "{s}");
    }
}
