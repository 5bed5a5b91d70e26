//! The flow set: `hosts` source addresses from a prefix, each with `ports_per_host` source
//! ports. Flow `f` is host `f % hosts`, port `f / hosts`: consecutive flows (and so
//! consecutive packets of one thread) come from different hosts, as a carrier's many
//! subscribers do, and one host's ports are spread over the run.

use std::net::Ipv4Addr;

/// Flows beyond this are refused: the per-flow state of generator and sink is allocated up
/// front and must stay bounded.
pub const MAX_FLOWS: u64 = 1 << 24;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowSet {
    /// First source address.
    pub first: Ipv4Addr,
    pub hosts: u32,
    /// First source port (or ICMP echo identifier).
    pub port_base: u16,
    pub ports_per_host: u32,
}

impl FlowSet {
    /// Checks that `hosts` addresses from `first` stay inside `first/prefix_len` and the
    /// ports inside 1..=65535.
    pub fn new(
        first: Ipv4Addr,
        prefix_len: u8,
        hosts: u32,
        port_base: u16,
        ports_per_host: u32,
    ) -> Result<FlowSet, String> {
        if prefix_len > 32 {
            return Err(format!("source prefix length {prefix_len}: at most 32"));
        }
        if hosts == 0 || ports_per_host == 0 {
            return Err("--hosts and --ports-per-host must be at least 1".into());
        }
        let mask = u32::MAX.checked_shl(32 - prefix_len as u32).unwrap_or(0);
        let last = u32::from(first) as u64 + hosts as u64 - 1;
        if last > u32::MAX as u64 || (last as u32) & mask != u32::from(first) & mask {
            return Err(format!(
                "--hosts {hosts} from {first} leaves the prefix {first}/{prefix_len}"
            ));
        }
        if port_base == 0 || port_base as u64 + ports_per_host as u64 - 1 > 65535 {
            return Err(format!(
                "--src-port {port_base} with --ports-per-host {ports_per_host}: ports must stay in 1..=65535"
            ));
        }
        let f = FlowSet {
            first,
            hosts,
            port_base,
            ports_per_host,
        };
        if f.count() > MAX_FLOWS {
            return Err(format!(
                "{} flows: at most {MAX_FLOWS} (hosts x ports per host)",
                f.count()
            ));
        }
        Ok(f)
    }

    pub fn count(&self) -> u64 {
        self.hosts as u64 * self.ports_per_host as u64
    }

    /// Source address (host order) and port of flow `f` (< [`count`](Self::count)).
    #[inline]
    pub fn flow(&self, f: u32) -> (u32, u16) {
        let host = f % self.hosts;
        let port = f / self.hosts;
        (u32::from(self.first) + host, self.port_base + port as u16)
    }
}

/// Parses `a.b.c.d/len` (or a bare address, /32).
pub fn parse_prefix(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (a, l) = s.split_once('/').unwrap_or((s, "32"));
    let a: Ipv4Addr = a
        .parse()
        .map_err(|_| format!("{s:?}: not an IPv4 address"))?;
    let l: u8 = l
        .parse()
        .ok()
        .filter(|l| *l <= 32)
        .ok_or_else(|| format!("{s:?}: prefix length must be 0..=32"))?;
    Ok((a, l))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_cover_hosts_then_ports() {
        let f = FlowSet::new("10.0.0.100".parse().unwrap(), 24, 100, 1000, 4).unwrap();
        assert_eq!(f.count(), 400);
        let ip = |s: &str| u32::from(s.parse::<Ipv4Addr>().unwrap());
        assert_eq!(f.flow(0), (ip("10.0.0.100"), 1000));
        assert_eq!(f.flow(1), (ip("10.0.0.101"), 1000));
        assert_eq!(f.flow(99), (ip("10.0.0.199"), 1000));
        assert_eq!(f.flow(100), (ip("10.0.0.100"), 1001));
        assert_eq!(f.flow(399), (ip("10.0.0.199"), 1003));
        let mut all: Vec<_> = (0..400).map(|i| f.flow(i)).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 400, "every flow is a distinct (address, port)");
    }

    #[test]
    fn bad_flow_sets_are_refused_with_the_option_named() {
        let a: Ipv4Addr = "10.0.0.200".parse().unwrap();
        assert!(FlowSet::new(a, 24, 56, 1, 1).is_ok());
        assert!(
            FlowSet::new(a, 24, 57, 1, 1)
                .unwrap_err()
                .contains("--hosts")
        );
        assert!(
            FlowSet::new(a, 24, 1, 65535, 2)
                .unwrap_err()
                .contains("--src-port")
        );
        assert!(FlowSet::new(a, 24, 0, 1, 1).is_err());
        assert!(
            FlowSet::new(a, 8, 1 << 16, 1, 1 << 10)
                .unwrap_err()
                .contains("at most")
        );
        assert_eq!(
            parse_prefix("10.1.0.0/16"),
            Ok(("10.1.0.0".parse().unwrap(), 16))
        );
        assert!(parse_prefix("10.1.0.0/33").is_err());
        assert!(parse_prefix("10.1.0/16").is_err());
    }
}
