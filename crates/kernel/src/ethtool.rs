//! NIC receive-side-scaling and offload settings through the legacy SIOCETHTOOL ioctl
//! (no ethtool netlink family needed, works on every kernel the dataplane supports).
//!
//! Like the netlink helpers, each call uses a socket of the calling thread's network
//! namespace.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_STXCSUM: u32 = 0x17;
const ETHTOOL_GRXFH: u32 = 0x29;
const ETHTOOL_GCHANNELS: u32 = 0x3c;
const ETHTOOL_GRSSH: u32 = 0x46;

/// `flow_type` values for [`rx_flow_hash_fields`].
pub const TCP_V4_FLOW: u32 = 0x01;
pub const UDP_V4_FLOW: u32 = 0x02;
/// Bits of the [`rx_flow_hash_fields`] result.
pub const RXH_IP_SRC: u64 = 0x10;
pub const RXH_IP_DST: u64 = 0x20;
pub const RXH_L4_B_0_1: u64 = 0x40;
pub const RXH_L4_B_2_3: u64 = 0x80;
/// `RssConfig::hfunc` bit for Toeplitz (ETH_RSS_HASH_TOP); XOR is 0x2, CRC32 0x4.
pub const ETH_RSS_HASH_TOP: u8 = 0x01;

/// `struct ethtool_rxfh` up to its flexible `rss_config` array.
const RXFH_HDR: usize = 24;
/// `struct ethtool_rxnfc` is 192 bytes on 64-bit kernels; a little slack costs nothing.
const RXNFC_LEN: usize = 256;

/// `struct ifreq` with the `ifr_data` member of the union: 40 bytes on 64-bit Linux.
#[repr(C)]
struct IfreqData {
    name: [u8; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 24 - std::mem::size_of::<*mut libc::c_void>()],
}

/// Runs ethtool command `buf` (which starts with its u32 `cmd`) against `ifname`; the
/// kernel reads and rewrites `buf` in place.
fn ethtool(ifname: &str, buf: &mut [u8]) -> io::Result<()> {
    let bytes = ifname.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name must be 1..=15 bytes without NUL",
        ));
    }
    // SAFETY: plain socket(2); checked before use.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut ifr = IfreqData {
        name: [0; libc::IFNAMSIZ],
        data: buf.as_mut_ptr().cast(),
        _pad: [0; 24 - std::mem::size_of::<*mut libc::c_void>()],
    };
    ifr.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: `ifr` is a valid ifreq whose data pointer covers `buf`, and every caller
    // sizes `buf` for the largest structure the command's kernel handler copies out.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), SIOCETHTOOL as _, &mut ifr) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn get_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

/// `Ok(None)` for "this driver does not implement the command".
fn unsupported_as_none<T>(r: io::Result<T>) -> io::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A NIC's RSS hash key, indirection table, and hash function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RssConfig {
    pub key: Vec<u8>,
    pub indirection: Vec<u32>,
    /// ETH_RSS_HASH_* bit of the active function ([`ETH_RSS_HASH_TOP`] for Toeplitz).
    pub hfunc: u8,
}

/// Reads the RSS configuration (ETHTOOL_GRSSH). `Ok(None)` when the driver has no RSS
/// (veth, most virtual devices).
pub fn rss_config(ifname: &str) -> io::Result<Option<RssConfig>> {
    // First call with zero sizes: the kernel reports the sizes it would return.
    let mut hdr = [0u8; RXFH_HDR];
    put_u32(&mut hdr, 0, ETHTOOL_GRSSH);
    let Some(()) = unsupported_as_none(ethtool(ifname, &mut hdr))? else {
        return Ok(None);
    };
    let indir_size = get_u32(&hdr, 8) as usize;
    let key_size = get_u32(&hdr, 12) as usize;
    // Real NICs have at most a few thousand entries and ~52-byte keys; refuse absurd
    // sizes instead of allocating them.
    if indir_size > 1 << 16 || key_size > 1 << 12 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "ethtool: implausible RSS table sizes",
        ));
    }
    let mut buf = vec![0u8; RXFH_HDR + indir_size * 4 + key_size];
    put_u32(&mut buf, 0, ETHTOOL_GRSSH);
    put_u32(&mut buf, 8, indir_size as u32);
    put_u32(&mut buf, 12, key_size as u32);
    let Some(()) = unsupported_as_none(ethtool(ifname, &mut buf))? else {
        return Ok(None);
    };
    let indirection = (0..indir_size)
        .map(|i| get_u32(&buf, RXFH_HDR + 4 * i))
        .collect();
    let key_at = RXFH_HDR + indir_size * 4;
    Ok(Some(RssConfig {
        key: buf[key_at..key_at + key_size].to_vec(),
        indirection,
        hfunc: buf[16],
    }))
}

/// Which header fields the NIC hashes for `flow_type` ([`TCP_V4_FLOW`], [`UDP_V4_FLOW`]):
/// a mask of `RXH_*` bits (ETHTOOL_GRXFH). `Ok(None)` when unsupported.
pub fn rx_flow_hash_fields(ifname: &str, flow_type: u32) -> io::Result<Option<u64>> {
    let mut buf = [0u8; RXNFC_LEN];
    put_u32(&mut buf, 0, ETHTOOL_GRXFH);
    put_u32(&mut buf, 4, flow_type);
    Ok(unsupported_as_none(ethtool(ifname, &mut buf))?.map(|()| {
        let mut data = [0u8; 8];
        data.copy_from_slice(&buf[8..16]);
        u64::from_ne_bytes(data)
    }))
}

/// Queues in use (ETHTOOL_GCHANNELS) as (receive, transmit), each counting combined
/// channels plus dedicated ones. `Ok(None)` when unsupported.
pub fn channels(ifname: &str) -> io::Result<Option<(u32, u32)>> {
    // struct ethtool_channels { cmd; max_rx, max_tx, max_other, max_combined;
    //                           rx_count, tx_count, other_count, combined_count; }
    let mut buf = [0u8; 36];
    put_u32(&mut buf, 0, ETHTOOL_GCHANNELS);
    Ok(unsupported_as_none(ethtool(ifname, &mut buf))?.map(|()| {
        let combined = get_u32(&buf, 32);
        (
            get_u32(&buf, 20).saturating_add(combined),
            get_u32(&buf, 24).saturating_add(combined),
        )
    }))
}

/// The channel counts of a NIC (ETHTOOL_GCHANNELS), as `ethtool -l` shows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Channels {
    pub rx: u32,
    pub tx: u32,
    pub other: u32,
    pub combined: u32,
    pub max_rx: u32,
    pub max_combined: u32,
}

impl Channels {
    /// Receive queues in use: combined channels plus dedicated receive ones.
    pub fn rx_queues(&self) -> u32 {
        self.rx.saturating_add(self.combined)
    }
}

/// The channel counts (ETHTOOL_GCHANNELS). `Ok(None)` when unsupported.
pub fn channel_counts(ifname: &str) -> io::Result<Option<Channels>> {
    let mut buf = [0u8; 36];
    put_u32(&mut buf, 0, ETHTOOL_GCHANNELS);
    Ok(
        unsupported_as_none(ethtool(ifname, &mut buf))?.map(|()| Channels {
            max_rx: get_u32(&buf, 4),
            max_combined: get_u32(&buf, 16),
            rx: get_u32(&buf, 20),
            tx: get_u32(&buf, 24),
            other: get_u32(&buf, 28),
            combined: get_u32(&buf, 32),
        }),
    )
}

/// Turns transmit checksum offload on or off (ETHTOOL_STXCSUM, `ethtool -K IF tx`).
///
/// Test topologies turn it off on veths: with it on, kernel-sent UDP carries only a
/// partial checksum, which an AF_XDP NAT would then rewrite incorrectly.
pub fn set_tx_checksum(ifname: &str, on: bool) -> io::Result<()> {
    let mut buf = [0u8; 8];
    put_u32(&mut buf, 0, ETHTOOL_STXCSUM);
    put_u32(&mut buf, 4, u32::from(on));
    ethtool(ifname, &mut buf)
}

/// Whether transmit checksum offload is on (ETHTOOL_GTXCSUM).
pub fn tx_checksum(ifname: &str) -> io::Result<bool> {
    let mut buf = [0u8; 8];
    put_u32(&mut buf, 0, ETHTOOL_GTXCSUM);
    ethtool(ifname, &mut buf)?;
    Ok(get_u32(&buf, 4) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_layout_matches_kernel() {
        assert_eq!(std::mem::size_of::<IfreqData>(), 40);
        assert_eq!(std::mem::offset_of!(IfreqData, data), 16);
    }

    #[test]
    fn rejects_bad_names_before_the_kernel() {
        for name in ["", "0123456789abcdef", "a\0b"] {
            let e = channels(name).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{name:?}");
        }
    }
}
