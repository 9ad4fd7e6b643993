//! Addresses: who the client is behind trusted proxies, and which addresses are not on the
//! public internet (refused for outbound requests).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address range, `10.0.0.0/8` or `fd00::/8` (a bare address is one host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub const fn v4(a: [u8; 4], prefix: u8) -> Cidr {
        Cidr {
            addr: IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])),
            prefix,
        }
    }

    pub const fn v6(segments: [u16; 8], prefix: u8) -> Cidr {
        let [a, b, c, d, e, f, g, h] = segments;
        Cidr {
            addr: IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h)),
            prefix,
        }
    }

    pub fn parse(s: &str) -> Result<Cidr, String> {
        let bad = || format!("{s:?} is not an address or an address range (10.0.0.0/8)");
        let (a, p) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = a.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Ranges that are not the public internet: this host, private networks, carrier NAT,
/// link-local, documentation, benchmarking, multicast, reserved, and the IPv6 forms that
/// carry an IPv4 address (mapped, NAT64, 6to4) are checked by their IPv4 address.
const NOT_PUBLIC: [Cidr; 24] = [
    Cidr::v4([0, 0, 0, 0], 8),
    Cidr::v4([10, 0, 0, 0], 8),
    Cidr::v4([100, 64, 0, 0], 10),
    Cidr::v4([127, 0, 0, 0], 8),
    Cidr::v4([169, 254, 0, 0], 16),
    Cidr::v4([172, 16, 0, 0], 12),
    Cidr::v4([192, 0, 0, 0], 24),
    Cidr::v4([192, 0, 2, 0], 24),
    Cidr::v4([192, 88, 99, 0], 24),
    Cidr::v4([192, 168, 0, 0], 16),
    Cidr::v4([198, 18, 0, 0], 15),
    Cidr::v4([198, 51, 100, 0], 24),
    Cidr::v4([203, 0, 113, 0], 24),
    Cidr::v4([224, 0, 0, 0], 4),
    Cidr::v4([240, 0, 0, 0], 4),
    Cidr::v6([0, 0, 0, 0, 0, 0, 0, 0], 127),
    Cidr::v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64),
    Cidr::v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23),
    Cidr::v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32),
    Cidr::v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),
    Cidr::v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),
    Cidr::v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10),
    Cidr::v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8),
    Cidr::v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20),
];

/// The IPv4 address an IPv6 address carries: mapped (`::ffff:a.b.c.d`), NAT64
/// (`64:ff9b::/96`) and 6to4 (`2002:AABB:CCDD::/16`).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let v4 = |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return Some(v4(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return Some(v4(s[1], s[2]));
    }
    None
}

/// Whether `ip` is outside the public internet (see `NOT_PUBLIC`).
pub fn is_private(ip: IpAddr) -> bool {
    if let IpAddr::V6(v6) = ip
        && let Some(v4) = embedded_v4(v6)
    {
        return is_private(IpAddr::V4(v4));
    }
    NOT_PUBLIC.iter().any(|c| c.contains(ip))
}

/// Parses `server.trusted_proxies`.
pub fn parse_ranges(list: &[String]) -> Result<Vec<Cidr>, String> {
    list.iter().map(|s| Cidr::parse(s)).collect()
}

/// The client's address: the TCP peer, or, when the peer is a trusted proxy, the nearest
/// address in `Forwarded` (else `X-Forwarded-For`) that is not a trusted proxy itself.
/// Addresses a client wrote further left are never believed.
pub fn client_ip(peer: IpAddr, headers: &axum::http::HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let mut hops: Vec<IpAddr> = Vec::new();
    let forwarded: Vec<&str> = headers
        .get_all("forwarded")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if !forwarded.is_empty() {
        for element in forwarded.iter().flat_map(|v| v.split(',')) {
            for pair in element.split(';') {
                if let Some((k, v)) = pair.trim().split_once('=')
                    && k.trim().eq_ignore_ascii_case("for")
                {
                    let v = v.trim().trim_matches('"');
                    // `for="[2001:db8::1]:4711"`, `for=192.0.2.43:80`
                    let host = match v.strip_prefix('[') {
                        Some(rest) => rest.split(']').next().unwrap_or(""),
                        None => v.rsplit_once(':').map_or(v, |(h, port)| {
                            if port.chars().all(|c| c.is_ascii_digit()) {
                                h
                            } else {
                                v
                            }
                        }),
                    };
                    match host.parse() {
                        Ok(ip) => hops.push(ip),
                        // An obfuscated or unknown hop: nothing left of it can be believed.
                        Err(_) => hops.clear(),
                    }
                }
            }
        }
    } else {
        for v in headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
        {
            for part in v.split(',') {
                match part.trim().parse() {
                    Ok(ip) => hops.push(ip),
                    Err(_) => hops.clear(),
                }
            }
        }
    }
    hops.into_iter()
        .rev()
        .find(|ip| !is_trusted(*ip))
        .unwrap_or(peer)
}

/// Whether a request came over TLS: directly, or per `X-Forwarded-Proto` /
/// `Forwarded: proto=` from a trusted proxy.
pub fn forwarded_https(peer: IpAddr, headers: &axum::http::HeaderMap, trusted: &[Cidr]) -> bool {
    if !trusted.iter().any(|c| c.contains(peer)) {
        return false;
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(p) = header("x-forwarded-proto") {
        return p
            .split(',')
            .next()
            .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
    }
    header("forwarded").is_some_and(|f| {
        f.split(',').next().unwrap_or("").split(';').any(|pair| {
            pair.trim().split_once('=').is_some_and(|(k, v)| {
                k.eq_ignore_ascii_case("proto") && v.trim_matches('"').eq_ignore_ascii_case("https")
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;

    #[test]
    fn ranges() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(Cidr::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        for bad in ["10.0.0.0/33", "nope", "10.0.0/8", "::/129"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn private_addresses_include_every_special_range() {
        for ip in [
            "0.1.2.3",
            "10.0.0.1",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
            "2002:a00:1::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "100::1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "100.128.0.1",
            "172.32.0.1",
            "2606:4700::1111",
            "64:ff9b::808:808",
            "2002:808:808::",
        ] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_client_is_believed_only_through_trusted_proxies() {
        let trusted = parse_ranges(&["10.0.0.0/8".into()]).unwrap();
        let proxy = "10.0.0.2".parse().unwrap();
        let stranger = "203.0.113.5".parse().unwrap();
        let xff = headers(&[("x-forwarded-for", "1.2.3.4, 198.51.100.9, 10.0.0.7")]);
        // The nearest untrusted hop; the client's own claim (1.2.3.4) is not believed.
        assert_eq!(
            client_ip(proxy, &xff, &trusted),
            "198.51.100.9".parse::<IpAddr>().unwrap()
        );
        // Not from a trusted proxy: the header is ignored.
        assert_eq!(client_ip(stranger, &xff, &trusted), stranger);
        let fwd = headers(&[(
            "forwarded",
            "for=192.0.2.60;proto=https, for=\"[2001:db8::17]:4711\"",
        )]);
        assert_eq!(
            client_ip(proxy, &fwd, &trusted),
            "2001:db8::17".parse::<IpAddr>().unwrap()
        );
        assert!(forwarded_https(proxy, &fwd, &trusted));
        assert!(!forwarded_https(stranger, &fwd, &trusted));
        let https = headers(&[("x-forwarded-proto", "https")]);
        assert!(forwarded_https(proxy, &https, &trusted));
        // No header: the proxy itself.
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &trusted), proxy);
    }
}
