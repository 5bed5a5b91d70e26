//! Hot-path field access at offsets already validated by `Engine::parse`. The typed views in
//! `crate::packet` do the validation; these helpers only read and write the few fields the
//! translation touches, so the fast path does no repeated bounds reasoning.

#[inline(always)]
pub fn rd16(d: &[u8], o: usize) -> u16 {
    u16::from_be_bytes([d[o], d[o + 1]])
}
#[inline(always)]
pub fn wr16(d: &mut [u8], o: usize, v: u16) {
    d[o..o + 2].copy_from_slice(&v.to_be_bytes());
}
#[inline(always)]
pub fn rd32(d: &[u8], o: usize) -> u32 {
    u32::from_be_bytes([d[o], d[o + 1], d[o + 2], d[o + 3]])
}
#[inline(always)]
pub fn wr32(d: &mut [u8], o: usize, v: u32) {
    d[o..o + 4].copy_from_slice(&v.to_be_bytes());
}

/// Sets the frame's 802.1Q encapsulation to `want` (None = untagged), moving only the MAC
/// addresses when the buffer has headroom. Returns false if a tag cannot be added for lack of room.
pub fn set_vlan(buf: &mut [u8], off: &mut usize, len: &mut usize, want: Option<u16>) -> bool {
    let o = *off;
    let tagged = *len >= 18 && rd16(buf, o + 12) == 0x8100;
    match (tagged, want) {
        (false, None) => true,
        (true, Some(vid)) => {
            let tci = (rd16(buf, o + 14) & 0xf000) | (vid & 0x0fff);
            wr16(buf, o + 14, tci);
            true
        }
        (true, None) => {
            buf.copy_within(o..o + 12, o + 4);
            *off += 4;
            *len -= 4;
            true
        }
        (false, Some(vid)) => {
            if o >= 4 {
                buf.copy_within(o..o + 12, o - 4);
                *off -= 4;
            } else if o + *len + 4 <= buf.len() {
                buf.copy_within(o + 12..o + *len, o + 16);
            } else {
                return false;
            }
            let n = *off;
            wr16(buf, n + 12, 0x8100);
            wr16(buf, n + 14, vid & 0x0fff);
            *len += 4;
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: Option<u16>) -> Vec<u8> {
        let mut f = vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
        if let Some(v) = tag {
            f.extend_from_slice(&[0x81, 0x00]);
            f.extend_from_slice(&(0x2000 | v).to_be_bytes());
        }
        f.extend_from_slice(&[0x08, 0x00, 0x45, 0xaa]);
        f
    }

    #[test]
    fn push_with_and_without_headroom_then_pop() {
        for head in [0usize, 4, 8] {
            let mut buf = vec![0u8; head + 40];
            let f = frame(None);
            buf[head..head + f.len()].copy_from_slice(&f);
            let (mut off, mut len) = (head, f.len());
            assert!(set_vlan(&mut buf, &mut off, &mut len, Some(100)));
            let want = {
                let mut w = frame(Some(100));
                w[14] &= 0x0f; // pushed tags have PCP 0
                w
            };
            assert_eq!(&buf[off..off + len], &want[..]);
            assert!(set_vlan(&mut buf, &mut off, &mut len, Some(200)));
            assert_eq!(rd16(&buf, off + 14) & 0xfff, 200);
            assert!(set_vlan(&mut buf, &mut off, &mut len, None));
            assert_eq!(&buf[off..off + len], &frame(None)[..]);
        }
    }

    #[test]
    fn push_without_room_fails_cleanly() {
        let f = frame(None);
        let mut buf = f.clone();
        let (mut off, mut len) = (0, f.len());
        assert!(!set_vlan(&mut buf, &mut off, &mut len, Some(5)));
        assert_eq!(buf, f);
        assert_eq!((off, len), (0, f.len()));
    }
}
