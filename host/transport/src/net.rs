//! What kind of address an IP is, for the rules of where plugin calls and
//! probe redirects may connect: one classification for both.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Addresses a plugin or a redirect reaches only when the operator names
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    Unspecified,
    Loopback,
    LinkLocal,
    Metadata,
}

impl Special {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "an unspecified address",
            Self::Loopback => "a loopback address",
            Self::LinkLocal => "a link-local address",
            Self::Metadata => "a cloud metadata address",
        }
    }
}

/// The special kind of `ip`, if any: IPv4-mapped and IPv4-compatible IPv6
/// forms count as the IPv4 address they carry.
pub fn special(ip: IpAddr) -> Option<Special> {
    let ip = match ip {
        IpAddr::V6(v6) => match v6.to_ipv4() {
            // `::` and `::1` are IPv4-compatible in form, but are
            // themselves unspecified and loopback.
            Some(v4) if !(v6.is_unspecified() || v6.is_loopback()) => IpAddr::V4(v4),
            _ => IpAddr::V6(v6),
        },
        v4 => v4,
    };
    const METADATA_V4: [Ipv4Addr; 2] = [Ipv4Addr::new(100, 100, 100, 200), Ipv4Addr::new(168, 63, 129, 16)];
    const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x254);
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() || v4.octets()[0] == 0 => Some(Special::Unspecified),
        IpAddr::V4(v4) if v4.is_loopback() => Some(Special::Loopback),
        IpAddr::V4(v4) if v4 == Ipv4Addr::new(169, 254, 169, 254) || METADATA_V4.contains(&v4) => {
            Some(Special::Metadata)
        }
        IpAddr::V4(v4) if v4.is_link_local() => Some(Special::LinkLocal),
        IpAddr::V6(v6) if v6.is_unspecified() => Some(Special::Unspecified),
        IpAddr::V6(v6) if v6.is_loopback() => Some(Special::Loopback),
        IpAddr::V6(v6) if v6 == METADATA_V6 => Some(Special::Metadata),
        IpAddr::V6(v6) if v6.is_unicast_link_local() => Some(Special::LinkLocal),
        _ => None,
    }
}
