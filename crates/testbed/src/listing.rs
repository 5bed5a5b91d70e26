//! A client for natgw's streamed `GET /sessions`, over the topology's Unix socket (the
//! CLI's way in): reads the chunked answer to its end as it arrives, counting the sessions
//! on the fly, so that a listing of a million sessions (hundreds of megabytes) never sits in
//! memory unless the caller keeps it.

use crate::lab::control_socket;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::time::{Duration, Instant};

/// Each session object of a listing starts with this (src/control/sessions.rs).
const SESSION_START: &[u8] = b"{\"core\":";

/// What one listing brought.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Listing {
    pub status: u16,
    /// Session objects in the body.
    pub sessions: u64,
    /// The answer's `"total"` (None: the body did not end with one).
    pub total: Option<u64>,
    /// Body bytes (de-chunked).
    pub bytes: u64,
    /// From sending the request to the end of the body.
    pub elapsed: Duration,
    /// From sending the request to the first body byte.
    pub first_byte: Duration,
}

/// Counts [`SESSION_START`] across the pieces of a stream.
#[derive(Default)]
struct Counter {
    n: u64,
    /// The end of the previous piece that may begin a match.
    carry: Vec<u8>,
    /// The last bytes of the stream, where `"total"` is.
    tail: Vec<u8>,
}

impl Counter {
    fn feed(&mut self, piece: &[u8]) {
        let k = SESSION_START.len();
        // The carry and the piece's first k - 1 bytes: each match in there straddles the
        // two (neither part alone is long enough to hold one).
        let mut joined = std::mem::take(&mut self.carry);
        joined.extend_from_slice(&piece[..piece.len().min(k - 1)]);
        self.n += (count(&joined, SESSION_START) + count(piece, SESSION_START)) as u64;
        // The stream's last k - 1 bytes (`joined` ends with the whole piece if it is short).
        let last = if piece.len() >= k - 1 {
            piece
        } else {
            &joined[..]
        };
        self.carry = last[last.len().saturating_sub(k - 1)..].to_vec();
        self.tail.extend_from_slice(piece);
        if self.tail.len() > 4096 {
            self.tail.drain(..self.tail.len() - 512);
        }
    }

    fn total(&self) -> Option<u64> {
        let t = String::from_utf8_lossy(&self.tail);
        let i = t.rfind("\"total\":")?;
        t[i + 8..]
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    }
}

fn count(hay: &[u8], needle: &[u8]) -> usize {
    if hay.len() < needle.len() {
        return 0;
    }
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

/// `GET /sessions?<query>` from the natgw in gateway namespace `gw_ns`, read to the end;
/// `keep` (if any) receives the whole body.
pub fn list_sessions(
    gw_ns: &str,
    query: &str,
    mut keep: Option<&mut Vec<u8>>,
) -> io::Result<Listing> {
    let mut s = std::os::unix::net::UnixStream::connect(control_socket(gw_ns))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    let path = if query.is_empty() {
        "/sessions".to_string()
    } else {
        format!("/sessions?{query}")
    };
    let start = Instant::now();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: natgw\r\nConnection: close\r\n\r\n"
    )?;
    let mut r = BufReader::with_capacity(1 << 20, s);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::other(format!("malformed status line: {line:?}")))?;
    let (mut chunked, mut length) = (false, None);
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(io::Error::other("the answer ended in its head"));
        }
        let l = line.trim_end().to_ascii_lowercase();
        if l.is_empty() {
            break;
        }
        if l == "transfer-encoding: chunked" {
            chunked = true;
        } else if let Some(v) = l.strip_prefix("content-length:") {
            length = v.trim().parse::<u64>().ok();
        }
    }
    let mut c = Counter::default();
    let mut out = Listing {
        status,
        ..Listing::default()
    };
    let mut piece = vec![0u8; 1 << 20];
    // Reads `n` body bytes (None: up to the end of the stream).
    let mut take = |n: Option<u64>, r: &mut dyn Read, out: &mut Listing| -> io::Result<()> {
        let mut left = n.unwrap_or(u64::MAX);
        while left > 0 {
            let want = left.min(piece.len() as u64) as usize;
            let got = match n {
                Some(_) => r.read_exact(&mut piece[..want]).map(|()| want)?,
                None => r.read(&mut piece[..want])?,
            };
            if got == 0 {
                break;
            }
            if out.bytes == 0 {
                out.first_byte = start.elapsed();
            }
            c.feed(&piece[..got]);
            if let Some(k) = keep.as_deref_mut() {
                k.extend_from_slice(&piece[..got]);
            }
            out.bytes += got as u64;
            left -= got as u64;
        }
        Ok(())
    };
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size = u64::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| io::Error::other(format!("malformed chunk size {line:?}")))?;
            if size == 0 {
                // Trailers (none from natgw) up to the empty line.
                loop {
                    line.clear();
                    if r.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
                        break;
                    }
                }
                break;
            }
            take(Some(size), &mut r, &mut out)?;
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf)?;
        }
    } else {
        take(length, &mut r, &mut out)?;
    }
    out.elapsed = start.elapsed();
    out.sessions = c.n;
    out.total = c.total();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_sessions_across_any_split() {
        let body = br#"{"sessions":[{"core":0,"x":1},{"core":0,"x":2},{"core":1,"x":3}],"total":3,"next":null}"#;
        for a in 0..body.len() {
            for b in a..body.len() {
                let mut c = Counter::default();
                c.feed(&body[..a]);
                c.feed(&body[a..b]);
                c.feed(&body[b..]);
                assert_eq!(c.n, 3, "split at {a}, {b}");
                assert_eq!(c.total(), Some(3));
            }
        }
        let mut c = Counter::default();
        for b in body.iter() {
            c.feed(std::slice::from_ref(b));
        }
        assert_eq!(c.n, 3);
    }
}
