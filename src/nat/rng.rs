//! A tiny, fast, non-cryptographic PRNG (wyrand) for per-core decisions such as
//! external port selection.
//!
//! Port randomisation (RFC 6056) only has to make ports hard to guess from outside;
//! the seed comes from the kernel's CSPRNG, so a per-core wyrand stream is enough and
//! costs one 64x64->128 multiply per draw. One `Rng` per worker: it is not `Sync`-shared.

/// wyrand state. The state is a Weyl sequence, so every seed (including 0) is fine.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// Seeded from `getrandom(2)`; falls back to time/pid/ASLR mixing if the
    /// kernel pool is unavailable (we never block startup waiting for entropy).
    pub fn from_entropy() -> Self {
        Rng(entropy_u64())
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.0) * u128::from(self.0 ^ 0xe703_7ed1_a0b4_28db);
        (t as u64) ^ ((t >> 64) as u64)
    }

    /// Uniform-enough value in `0..n` (Lemire's multiply-shift on 64 random bits;
    /// bias is at most n / 2^64). `n == 0` returns 0 instead of panicking.
    #[inline]
    pub fn below(&mut self, n: u32) -> u32 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u32
    }
}

/// 64 bits from the kernel CSPRNG (non-blocking), or a time/pid/address mix if that fails.
pub fn entropy_u64() -> u64 {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let mut buf = [0u8; 8];
        // SAFETY: buf is a valid, writable 8-byte buffer for the duration of the call.
        let n = unsafe {
            libc::getrandom(
                buf.as_mut_ptr().cast::<libc::c_void>(),
                buf.len(),
                libc::GRND_NONBLOCK,
            )
        };
        if n == 8 {
            return u64::from_ne_bytes(buf);
        }
    }
    fallback_entropy()
}

fn fallback_entropy() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let local = 0u8;
    let addr = &local as *const u8 as u64;
    let pid = u64::from(std::process::id());
    // One wyrand step over the mix spreads the low-entropy inputs across all bits.
    let mut r = Rng(nanos ^ addr.rotate_left(32) ^ pid.rotate_left(48));
    r.next_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_for_a_seed() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        let mut c = Rng::new(43);
        let va: Vec<u64> = (0..16).map(|_| a.next_u64()).collect();
        let vb: Vec<u64> = (0..16).map(|_| b.next_u64()).collect();
        let vc: Vec<u64> = (0..16).map(|_| c.next_u64()).collect();
        assert_eq!(va, vb);
        assert_ne!(va, vc);
    }

    #[test]
    fn below_in_range_and_covers_it() {
        let mut r = Rng::new(7);
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            let v = r.below(10);
            assert!(v < 10);
            seen[v as usize] += 1;
        }
        // Each bucket expects 1000; a broken generator would be far off.
        for &s in &seen {
            assert!((800..1200).contains(&s), "skewed: {seen:?}");
        }
        assert_eq!(r.below(1), 0);
        assert_eq!(r.below(0), 0);
    }

    #[test]
    fn bits_look_balanced() {
        let mut r = Rng::new(0);
        let ones: u32 = (0..1000).map(|_| r.next_u64().count_ones()).sum();
        // 64000 bits, expect ~32000 ones.
        assert!((31_000..33_000).contains(&ones), "{ones}");
    }

    #[test]
    fn entropy_differs_between_calls() {
        assert_ne!(
            Rng::from_entropy().next_u64(),
            Rng::from_entropy().next_u64()
        );
        assert_ne!(fallback_entropy(), 0);
    }
}
