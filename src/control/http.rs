//! A deliberately small HTTP/1.1 server: one request per connection, bounded request size,
//! plain text and JSON answers. The management API has a handful of endpoints and a few
//! clients (Prometheus, the CLI), so this is all it needs.

use super::State;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

pub fn serve(listener: TcpListener, state: Arc<State>) {
    for conn in listener.incoming() {
        let Ok(stream) = conn else { continue };
        let st = Arc::clone(&state);
        let _ = std::thread::Builder::new()
            .name("natgw-api-conn".into())
            .spawn(move || {
                let _ = handle(stream, &st);
            });
    }
}

fn respond(mut s: &TcpStream, status: &str, ctype: &str, body: &str) -> std::io::Result<()> {
    write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn bad_request(s: &TcpStream, err: &str) -> std::io::Result<()> {
    let body = format!("{{\"ok\":false,\"error\":{}}}", super::json_str(err));
    respond(s, "400 Bad Request", "application/json", &body)
}

fn handle(stream: TcpStream, st: &State) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    // A client that stops reading (a large /sessions answer fills the socket buffer) must
    // not park this thread in write(2) forever.
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut r = BufReader::new(stream.try_clone()?.take(64 * 1024));
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    // Skip headers.
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    const JSON: &str = "application/json";
    match (method, path) {
        ("GET", "/metrics") => {
            let h = st
                .handle
                .lock()
                .map_err(|_| std::io::Error::other("lock"))?
                .clone();
            respond(
                &stream,
                "200 OK",
                "text/plain; version=0.0.4",
                &st.metrics.render(&h),
            )
        }
        ("GET", "/stats") => {
            let h = st
                .handle
                .lock()
                .map_err(|_| std::io::Error::other("lock"))?
                .clone();
            respond(&stream, "200 OK", JSON, &super::stats_json(&h))
        }
        ("GET", "/sessions") => {
            let h = st
                .handle
                .lock()
                .map_err(|_| std::io::Error::other("lock"))?
                .clone();
            match super::sessions::Query::parse(query, &h) {
                // Streamed as the workers answer, ended by closing the connection.
                Ok(q) => {
                    let mut w = std::io::BufWriter::new(&stream);
                    write!(
                        w,
                        "HTTP/1.1 200 OK\r\nContent-Type: {JSON}\r\nConnection: close\r\n\r\n"
                    )?;
                    super::sessions::list(&h, &q, &mut |chunk| w.write_all(chunk.as_bytes()))?;
                    w.flush()
                }
                Err(e) => bad_request(&stream, &e.to_string()),
            }
        }
        ("DELETE", "/sessions") => {
            let h = st
                .handle
                .lock()
                .map_err(|_| std::io::Error::other("lock"))?
                .clone();
            match super::sessions::Query::parse(query, &h) {
                Ok(q) => {
                    let n = super::sessions::delete(&h, &q)?;
                    respond(
                        &stream,
                        "200 OK",
                        JSON,
                        &format!("{{\"ok\":true,\"removed\":{n}}}"),
                    )
                }
                Err(e) => bad_request(&stream, &e.to_string()),
            }
        }
        ("POST", "/reload") => match super::reload(st) {
            Ok(m) => respond(
                &stream,
                "200 OK",
                JSON,
                &format!(
                    "{{\"ok\":true,\"generation\":{},\"message\":{}}}",
                    m.generation,
                    super::json_str(&m.message)
                ),
            ),
            Err(e) => respond(
                &stream,
                "400 Bad Request",
                JSON,
                &format!(
                    "{{\"ok\":false,\"error\":{}}}",
                    super::json_str(&e.to_string())
                ),
            ),
        },
        ("POST", "/sessions/clear") => {
            let h = st
                .handle
                .lock()
                .map_err(|_| std::io::Error::other("lock"))?
                .clone();
            super::clear_sessions(&h);
            respond(&stream, "200 OK", JSON, "{\"ok\":true}")
        }
        ("GET", "/") => respond(
            &stream,
            "200 OK",
            "text/plain",
            "natgw: /metrics /stats /sessions DELETE /sessions POST /reload /sessions/clear\n",
        ),
        _ => respond(&stream, "404 Not Found", "text/plain", "not found\n"),
    }
}
