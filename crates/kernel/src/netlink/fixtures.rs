//! Builders shared by the netlink tests.

use super::message::align4;

/// One route attribute (`struct rtattr`) as the kernel lays it out, padded.
pub(super) fn rta(ty: u16, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    v.extend_from_slice(&ty.to_ne_bytes());
    v.extend_from_slice(value);
    v.resize(align4(v.len()), 0);
    v
}

/// A hardware address for the fixtures.
pub(super) const MAC: [u8; 6] = [2, 0, 0, 0xaa, 0xbb, 0xcc];
