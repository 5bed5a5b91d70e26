//! The operator's commands against a running natgw: `status`, `sessions`, `reload`, `drops`,
//! `mappings list`. Each is one or two API requests (`client.rs`) over the Unix socket
//! (`--socket`, default `control.socket`'s) or over HTTP (`--url`, `--token-file`); human
//! tables by default (`table.rs`), the API's JSON with `--json`.
//!
//! Exit codes: 0 done, 1 natgw refused or failed the request, 2 usage (clap's, and ours
//! for a bad --url or token file), 3 natgw cannot be reached.

mod client;
mod table;

use clap::{Args, Subcommand};
use client::{CallError, Client, Target};
use hyper::Method;
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;
use table::{Table, duration};

/// How to reach natgw; global, so that it may follow the subcommand.
#[derive(Args, Debug)]
pub struct Connect {
    /// natgw's Unix socket (control.socket).
    #[arg(long, global = true, value_name = "PATH", default_value = natgw::config::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Talk HTTP to natgw's control.listen instead, e.g. http://127.0.0.1:9180.
    #[arg(long, global = true, value_name = "URL")]
    url: Option<String>,
    /// The bearer token for --url (control.token_file on the natgw side).
    #[arg(long, global = true, value_name = "FILE", requires = "url")]
    token_file: Option<PathBuf>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Version, uptime, workers, interfaces and their XDP mode, sessions, drops.
    Status,
    /// The session list, filtered.
    Sessions(SessionArgs),
    /// Re-read natgw's configuration file and apply it (like SIGHUP).
    Reload,
    /// Frames dropped, by reason (the engine's and the XDP program's).
    Drops {
        /// Also reasons with no drops.
        #[arg(long)]
        all: bool,
    },
    /// Static port forwards and 1:1 mappings of the running configuration.
    Mappings {
        #[command(subcommand)]
        cmd: MappingsCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum MappingsCommand {
    /// List them per realm.
    List,
    /// Add a static port forward (or, with --one-to-one, a 1:1 mapping), or replace the one
    /// with the same protocol and external endpoint; kept in the realm's mappings_file.
    Add(MappingArgs),
    /// Remove a static port forward (or, with --one-to-one, a 1:1 mapping) from the realm's
    /// mappings_file; its sessions are removed.
    Del(MappingArgs),
}

#[derive(Args, Debug)]
pub struct MappingArgs {
    /// The realm (by name).
    #[arg(long)]
    realm: String,
    /// A 1:1 mapping: --external and --internal are addresses, no --protocol.
    #[arg(long, conflicts_with = "protocol")]
    one_to_one: bool,
    /// tcp or udp (a static port forward).
    #[arg(long)]
    protocol: Option<String>,
    /// External address:port (address with --one-to-one).
    #[arg(long)]
    external: String,
    /// Inside address:port (address with --one-to-one); not for del.
    #[arg(long)]
    internal: Option<String>,
}

#[derive(Args, Debug)]
pub struct SessionArgs {
    /// Only this realm.
    #[arg(long)]
    realm: Option<String>,
    /// Only this protocol.
    #[arg(long, value_parser = ["tcp", "udp", "icmp"])]
    proto: Option<String>,
    /// Only this inside address (a.b.c.d or a.b.c.d:port).
    #[arg(long, value_name = "ADDR[:PORT]")]
    inside: Option<String>,
    /// Only this external (translated) address.
    #[arg(long, value_name = "ADDR[:PORT]")]
    external: Option<String>,
    /// Only this remote address.
    #[arg(long, value_name = "ADDR[:PORT]")]
    remote: Option<String>,
    /// At most this many (the total that match is printed too).
    #[arg(long, default_value_t = 1000)]
    limit: usize,
    /// Continue a listing where the last page ended (its `next`).
    #[arg(long)]
    cursor: Option<String>,
}

/// What went wrong, and the exit code it gives.
enum Failure {
    Usage(String),
    Call(CallError),
    /// Writing the answer failed (not a closed pipe: that ends the output quietly).
    Output(std::io::Error),
}

impl From<CallError> for Failure {
    fn from(e: CallError) -> Self {
        Failure::Call(e)
    }
}

/// Runs `cmd`; prints its output or the error.
pub fn run(connect: &Connect, cmd: &Command) -> ExitCode {
    match execute(connect, cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(m)) => {
            eprintln!("natgw: {m}");
            ExitCode::from(2)
        }
        Err(Failure::Output(e)) => {
            eprintln!("natgw: writing the answer: {e}");
            ExitCode::from(1)
        }
        Err(Failure::Call(e)) => {
            eprintln!("natgw: {e}");
            match e {
                CallError::Unreachable(_) => ExitCode::from(3),
                CallError::Refused { .. } | CallError::Protocol(_) => ExitCode::from(1),
            }
        }
    }
}

fn client(c: &Connect) -> Result<Client, Failure> {
    let target = match &c.url {
        Some(u) => Target::from_url(u).map_err(Failure::Usage)?,
        None => Target::Unix(c.socket.clone()),
    };
    let token = match &c.token_file {
        Some(p) => {
            let t = std::fs::read_to_string(p)
                .map_err(|e| Failure::Usage(format!("--token-file {}: {e}", p.display())))?;
            let t = t.trim().to_string();
            if t.is_empty() {
                return Err(Failure::Usage(format!(
                    "--token-file {}: empty",
                    p.display()
                )));
            }
            Some(t)
        }
        None => None,
    };
    Ok(Client { target, token })
}

/// `a=b&c=d` with the values %-escaped.
fn query(pairs: &[(&str, &Option<String>)]) -> String {
    let mut q = Vec::new();
    for (k, v) in pairs {
        if let Some(v) = v {
            let esc: String = v
                .bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b".-_:~".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect();
            q.push(format!("{k}={esc}"));
        }
    }
    q.join("&")
}

/// Writes the answer to stdout. `print!` would panic when stdout is a pipe its reader
/// closed (`natgw sessions | head`: Rust ignores SIGPIPE, so the write fails with EPIPE);
/// a closed pipe ends the output quietly and successfully, as for `ls | head`, and any
/// other write error is reported with exit code 1.
fn out(text: &str) -> Result<(), Failure> {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    match o.write_all(text.as_bytes()).and_then(|()| o.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Failure::Output(e)),
        _ => Ok(()),
    }
}

fn print_json(v: &Value) -> Result<(), Failure> {
    out(&format!(
        "{}\n",
        serde_json::to_string_pretty(v).unwrap_or_default()
    ))
}

fn execute(connect: &Connect, cmd: &Command) -> Result<(), Failure> {
    let c = client(connect)?;
    match cmd {
        Command::Status => {
            let status = c.get_json("/status")?;
            let stats = c.get_json("/stats")?;
            if connect.json {
                print_json(&serde_json::json!({ "status": status, "stats": stats }))?;
            } else {
                out(&status_text(&status, &stats))?;
            }
        }
        Command::Sessions(a) => {
            let limit = Some(a.limit.to_string());
            let q = query(&[
                ("realm", &a.realm),
                ("protocol", &a.proto),
                ("inside", &a.inside),
                ("external", &a.external),
                ("remote", &a.remote),
                ("limit", &limit),
                ("cursor", &a.cursor),
            ]);
            let v = c.get_json(&format!("/sessions?{q}"))?;
            if connect.json {
                print_json(&v)?;
            } else {
                out(&sessions_text(&v))?;
            }
        }
        Command::Reload => {
            let body = c.call(Method::POST, "/reload")?;
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            if connect.json {
                print_json(&v)?;
            } else {
                let m = v.get("message").and_then(Value::as_str).unwrap_or("done");
                out(&format!("natgw: {m}\n"))?;
            }
        }
        Command::Drops { all } => {
            let stats = c.get_json("/stats")?;
            let drops = drops_of(&stats, *all);
            if connect.json {
                let obj: serde_json::Map<String, Value> = drops
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::from(*v)))
                    .collect();
                print_json(&Value::Object(obj))?;
            } else {
                out(&drops_text(&drops))?;
            }
        }
        Command::Mappings {
            cmd: MappingsCommand::Add(a),
        } => {
            let internal = a
                .internal
                .as_deref()
                .ok_or_else(|| Failure::Usage("mappings add needs --internal".into()))?;
            let body = if a.one_to_one {
                serde_json::json!({
                    "realm": a.realm,
                    "one_to_one": { "external": a.external, "internal": internal },
                })
            } else {
                let protocol = a.protocol.as_deref().ok_or_else(|| {
                    Failure::Usage("mappings add needs --protocol (or --one-to-one)".into())
                })?;
                serde_json::json!({
                    "realm": a.realm, "protocol": protocol,
                    "external": a.external, "internal": internal,
                })
            };
            let answer = c.call_with(Method::PUT, "/mappings", body.to_string().into())?;
            print_edit(connect, &answer)?;
        }
        Command::Mappings {
            cmd: MappingsCommand::Del(a),
        } => {
            if a.internal.is_some() {
                return Err(Failure::Usage("mappings del takes no --internal".into()));
            }
            if !a.one_to_one && a.protocol.is_none() {
                return Err(Failure::Usage(
                    "mappings del needs --protocol (or --one-to-one)".into(),
                ));
            }
            let realm = Some(a.realm.clone());
            let external = Some(a.external.clone());
            let protocol = if a.one_to_one {
                None
            } else {
                a.protocol.clone()
            };
            let q = query(&[
                ("realm", &realm),
                ("protocol", &protocol),
                ("external", &external),
            ]);
            let answer = c.call(Method::DELETE, &format!("/mappings?{q}"))?;
            print_edit(connect, &answer)?;
        }
        Command::Mappings {
            cmd: MappingsCommand::List,
        } => {
            let v = c.get_json("/mappings")?;
            if connect.json {
                print_json(&v)?;
            } else {
                out(&mappings_text(&v))?;
            }
        }
    }
    Ok(())
}

/// The answer of a mapping edit: `natgw: added (generation 4, /etc/natgw/m.toml)`.
fn print_edit(connect: &Connect, answer: &[u8]) -> Result<(), Failure> {
    let v: Value = serde_json::from_slice(answer).unwrap_or(Value::Null);
    if connect.json {
        print_json(&v)
    } else {
        out(&format!(
            "natgw: {} (generation {}, written to {})\n",
            text(&v, "action"),
            num(&v, "generation"),
            text(&v, "file")
        ))
    }
}

fn num(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

fn text<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("-")
}

/// Every drop counter of /stats (`drop_<reason>` of the engine, `xdp_drop_<reason>` of the
/// XDP program), largest first.
fn drops_of(stats: &Value, all: bool) -> Vec<(String, u64)> {
    let mut d: Vec<(String, u64)> = stats
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.starts_with("drop_") || k.starts_with("xdp_drop_"))
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
        .filter(|(_, v)| all || *v > 0)
        .collect();
    d.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    d
}

fn drops_text(drops: &[(String, u64)]) -> String {
    if drops.is_empty() {
        return "no drops\n".into();
    }
    let mut t = Table::new(&["REASON", "FRAMES"]);
    for (k, v) in drops {
        let (src, reason) = match k.strip_prefix("xdp_drop_") {
            Some(r) => ("xdp", r),
            None => ("engine", k.strip_prefix("drop_").unwrap_or(k)),
        };
        t.row(vec![format!("{reason} ({src})"), v.to_string()]);
    }
    t.render()
}

fn status_text(status: &Value, stats: &Value) -> String {
    let mut o = String::new();
    o += &format!(
        "natgw {}, up {}\n",
        text(status, "version"),
        duration(num(status, "uptime_secs"))
    );
    o += &format!(
        "workers      {} ({} alive)\n",
        num(status, "workers"),
        num(status, "workers_alive")
    );
    let ready = if status.get("ready").and_then(Value::as_bool) == Some(true) {
        "yes".to_string()
    } else {
        let why: Vec<&str> = status
            .get("not_ready")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        format!("no: {}", why.join("; "))
    };
    o += &format!("ready        {ready}\n");
    if let Some(g) = status
        .get("generation")
        .or_else(|| stats.get("generation"))
        .and_then(Value::as_u64)
    {
        o += &format!("generation   {g}\n");
    }
    let mut first = true;
    for i in status
        .get("interfaces")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let up = i.get("up").and_then(Value::as_bool) == Some(true);
        o += &format!(
            "{:<13}{:<16} xdp {:<8} {}\n",
            if first { "interfaces" } else { "" },
            text(i, "name"),
            text(i, "xdp_mode"),
            if up { "up" } else { "DOWN" }
        );
        first = false;
    }
    o += &format!(
        "sessions     {} active, {} created, {} expired\n",
        num(stats, "sessions_active"),
        num(stats, "sessions_created"),
        num(stats, "sessions_expired")
    );
    let drops = drops_of(stats, false);
    let total: u64 = drops.iter().map(|(_, v)| v).sum();
    let top: Vec<String> = drops
        .iter()
        .take(3)
        .map(|(k, v)| format!("{}={v}", k.strip_prefix("drop_").unwrap_or(k)))
        .collect();
    o += &format!(
        "drops        {total}{}\n",
        if top.is_empty() {
            String::new()
        } else {
            format!(" ({})", top.join(", "))
        }
    );
    o
}

fn sessions_text(v: &Value) -> String {
    let list = v.get("sessions").and_then(Value::as_array);
    let mut t = Table::new(&[
        "PROTO", "REALM", "INSIDE", "EXTERNAL", "REMOTE", "STATE", "AGE", "EXPIRES", "CORE",
    ]);
    for s in list.into_iter().flatten() {
        let state = match (
            s.get("state").and_then(Value::as_str),
            s.get("protocol").and_then(Value::as_str),
            s.get("tcp_established").and_then(Value::as_bool),
        ) {
            (Some(st), _, _) => st,
            (None, Some("tcp"), Some(true)) => "established",
            (None, Some("tcp"), _) => "transitory",
            _ => "-",
        };
        let inbound = s.get("inbound").and_then(Value::as_bool) == Some(true);
        t.row(vec![
            text(s, "protocol").to_string(),
            text(s, "realm").to_string(),
            text(s, "inside").to_string(),
            text(s, "external").to_string(),
            text(s, "remote").to_string(),
            if inbound {
                format!("{state} (in)")
            } else {
                state.to_string()
            },
            duration(num(s, "age_secs")),
            duration(num(s, "expires_in_secs")),
            num(s, "core").to_string(),
        ]);
    }
    let shown = list.map_or(0, Vec::len);
    let more = match v.get("next").and_then(Value::as_str) {
        Some(c) => format!(" (more: --cursor {c})"),
        None => String::new(),
    };
    format!(
        "{}{shown} of {} session(s){more}\n",
        if shown > 0 { t.render() } else { String::new() },
        num(v, "total")
    )
}

fn mappings_text(v: &Value) -> String {
    let mut t = Table::new(&["REALM", "KIND", "PROTO", "EXTERNAL", "INTERNAL"]);
    let mut n = 0;
    for r in v
        .get("realms")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let realm = text(r, "realm");
        for m in r
            .get("static")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            t.row(vec![
                realm.into(),
                "forward".into(),
                text(m, "protocol").into(),
                text(m, "external").into(),
                text(m, "internal").into(),
            ]);
            n += 1;
        }
        for m in r
            .get("one_to_one")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            t.row(vec![
                realm.into(),
                "1:1".into(),
                "all".into(),
                text(m, "external").into(),
                text(m, "internal").into(),
            ]);
            n += 1;
        }
    }
    if n == 0 {
        "no static forwards or 1:1 mappings\n".into()
    } else {
        t.render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_escapes_values() {
        let (a, b, none) = (
            Some("a b&c".to_string()),
            Some("10.0.0.5:80".to_string()),
            None,
        );
        assert_eq!(
            query(&[("realm", &a), ("inside", &b), ("remote", &none)]),
            "realm=a%20b%26c&inside=10.0.0.5:80"
        );
    }

    #[test]
    fn tables() {
        let v: Value = serde_json::from_str(
            r#"{"total":3,"sessions":[{"core":1,"realm":"lab","protocol":"tcp",
            "inside":"10.0.0.2:4000","external":"192.168.1.10:4000","remote":"192.168.2.2:80",
            "tcp_established":true,"age_secs":61,"expires_in_secs":7379,"inbound":false}]}"#,
        )
        .unwrap();
        let out = sessions_text(&v);
        assert!(out.contains("10.0.0.2:4000"), "{out}");
        assert!(
            out.contains("established") && out.contains("1m01s"),
            "{out}"
        );
        assert!(out.ends_with("1 of 3 session(s)\n"), "{out}");
        let stats: Value =
            serde_json::from_str(r#"{"drop_no_route":5,"drop_ttl":0,"xdp_drop_short":7}"#).unwrap();
        let d = drops_of(&stats, false);
        assert_eq!(
            d,
            vec![("xdp_drop_short".into(), 7), ("drop_no_route".into(), 5)]
        );
        assert!(drops_text(&d).contains("no_route (engine)"));
        assert_eq!(drops_of(&stats, true).len(), 3);
    }
}
