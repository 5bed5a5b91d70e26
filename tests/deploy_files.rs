//! The deploy files against natgw (issue 12, "Deploy and packaging"), no root needed:
//!
//! - every metric name the alert rules (deploy/prometheus/natgw-alerts.yml) and the Grafana
//!   dashboard (deploy/grafana/natgw.json) use is in the contract table of
//!   deploy/prometheus/README.md;
//! - every name in the contract is exported by natgw, with the contract's type and label
//!   names (natgw's exposition rendered from a gateway handle without a running gateway),
//!   unless it is in `PENDING`;
//! - promtool accepts the rules, the scrape configuration, the rules' unit tests (every alert
//!   once firing and once not) and the dashboard's expressions.
//!
//! promtool comes with Debian's `prometheus` package; under `CI=true` it is required.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use natgw::control::metrics::Metrics;
use natgw::dataplane::run::{Handle, Health};

/// Contract names natgw does not export yet in the contract's form (type and labels): the
/// metrics helper of issue 12 adds them (or, for natgw_sessions_active and
/// natgw_sessions_created_total, changes today's `worker` label to `realm`, `protocol`).
/// Empty this list when that work is merged; the test then fails for any name still missing,
/// and also fails while a name listed here is already exported as the contract says.
const PENDING: &[&str] = &[];

/// Contract names natgw exports only while it runs: per AF_XDP socket, per interface that
/// has a socket, per pool address a worker has published. A handle without a running
/// gateway has none of them; `natgw_exports_every_contract_name_while_forwarding` checks
/// them (with all the others) against a running natgw.
const LIVE_ONLY: &[&str] = &[
    "natgw_rx_packets_total",
    "natgw_rx_bytes_total",
    "natgw_tx_packets_total",
    "natgw_tx_bytes_total",
    "natgw_pool_ports_used",
    "natgw_pool_ports_usable",
    "natgw_pool_use_ratio",
    "natgw_xsk_rx_dropped_total",
    "natgw_xsk_rx_invalid_descs_total",
    "natgw_xsk_rx_ring_full_total",
    "natgw_xsk_rx_fill_ring_empty_descs_total",
    "natgw_xsk_tx_invalid_descs_total",
    "natgw_xsk_tx_ring_empty_descs_total",
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

// ---------------------------------------------------------------------------------------
// The contract
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Entry {
    kind: String,
    labels: BTreeSet<String>,
}

/// The rows of the table in deploy/prometheus/README.md's "The contract" section:
/// `| \`name\` | type | labels | meaning |`.
fn contract() -> BTreeMap<String, Entry> {
    let text = read("deploy/prometheus/README.md");
    let (_, table) = text
        .split_once("\n## The contract")
        .expect("README.md has no \"## The contract\" section");
    let mut m = BTreeMap::new();
    for line in table.lines() {
        if line.starts_with("## ") {
            break;
        }
        let Some(rest) = line.strip_prefix("| `") else {
            continue;
        };
        let cells: Vec<&str> = rest.split('|').map(str::trim).collect();
        let name = cells[0].trim_end_matches('`').to_string();
        let kind = cells[1].to_string();
        assert!(
            ["counter", "gauge", "histogram"].contains(&kind.as_str()),
            "README.md contract: {name}: type {kind:?}"
        );
        let labels: BTreeSet<String> = if cells[2] == "—" {
            BTreeSet::new()
        } else {
            cells[2]
                .split(',')
                .map(|l| l.trim().trim_matches('`').to_string())
                .collect()
        };
        assert!(
            m.insert(name.clone(), Entry { kind, labels }).is_none(),
            "README.md contract: {name} twice"
        );
    }
    assert!(m.len() > 20, "the contract table was not found: {m:?}");
    m
}

/// The contract name a series name refers to: a histogram's `_bucket`, `_sum` and `_count`
/// series belong to the histogram.
fn contract_name(c: &BTreeMap<String, Entry>, series: &str) -> Option<String> {
    if c.contains_key(series) {
        return Some(series.to_string());
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = series.strip_suffix(suffix)
            && c.get(base).is_some_and(|e| e.kind == "histogram")
        {
            return Some(base.to_string());
        }
    }
    None
}

// ---------------------------------------------------------------------------------------
// PromQL: the metric names of an expression
// ---------------------------------------------------------------------------------------

/// Words of PromQL that are not metric names when they stand alone.
const KEYWORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
];

/// Keywords followed by a parenthesised list of label names.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names `expr` selects: identifiers that are not a function (followed by `(`),
/// a keyword, a label list, a label matcher (inside `{}`), a duration (inside `[]`), a
/// string, a number or a Grafana variable (`$...`).
fn metric_names(expr: &str) -> Vec<String> {
    let c: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    let skip_ws = |mut j: usize| {
        while j < c.len() && c[j].is_whitespace() {
            j += 1;
        }
        j
    };
    let skip_to = |mut j: usize, close: char| {
        let mut quote: Option<char> = None;
        while j < c.len() {
            match quote {
                Some(_) if c[j] == '\\' => j += 1,
                Some(q) if c[j] == q => quote = None,
                Some(_) => {}
                None if c[j] == '"' || c[j] == '\'' || c[j] == '`' => quote = Some(c[j]),
                None if c[j] == close => return j + 1,
                None => {}
            }
            j += 1;
        }
        panic!("unbalanced {close:?} in {expr:?}");
    };
    while i < c.len() {
        let ch = c[i];
        if ch == '{' {
            i = skip_to(i + 1, '}');
        } else if ch == '[' {
            i = skip_to(i + 1, ']');
        } else if ch == '"' || ch == '\'' || ch == '`' {
            let mut j = i + 1;
            while j < c.len() && c[j] != ch {
                if c[j] == '\\' {
                    j += 1;
                }
                j += 1;
            }
            i = j + 1;
        } else if ch == '$' {
            i += 1;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
        } else if ch.is_ascii_digit() || (ch == '.' && i + 1 < c.len() && c[i + 1].is_ascii_digit())
        {
            // A number, also 1e3, 0x1f, or a duration after offset.
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '.') {
                i += 1;
            }
        } else if ch.is_ascii_alphabetic() || ch == '_' || ch == ':' {
            let start = i;
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '_' || c[i] == ':') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let next = skip_ws(i);
            let lower = word.to_lowercase();
            if LABEL_LISTS.contains(&lower.as_str()) {
                if next < c.len() && c[next] == '(' {
                    i = skip_to(next + 1, ')');
                }
            } else if KEYWORDS.contains(&lower.as_str()) || (next < c.len() && c[next] == '(') {
                // A keyword or a function call.
            } else {
                names.push(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn the_lexer_finds_metric_names_only() {
    let e = r#"histogram_quantile(0.99, sum by (worker, le) (rate(natgw_batch_seconds_bucket{instance=~"$instance",a="}"}[$__rate_interval]))) / on (worker) group_left natgw_x > 0.9 or up{job="natgw"} == 0 offset 5m"#;
    assert_eq!(
        metric_names(e),
        ["natgw_batch_seconds_bucket", "natgw_x", "up"]
    );
    assert_eq!(
        metric_names("label_values(natgw_build_info, instance)"),
        ["natgw_build_info", "instance"],
        "label_values is a Grafana function: its second argument is handled by the caller"
    );
}

// ---------------------------------------------------------------------------------------
// The expressions of the alert rules and the dashboard
// ---------------------------------------------------------------------------------------

/// `(alert name, expr)` of every rule in natgw-alerts.yml: `expr:` on one line, or a `>-`
/// / `|` block of more-indented lines.
fn rule_exprs() -> Vec<(String, String)> {
    let text = read("deploy/prometheus/natgw-alerts.yml");
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut alert = String::new();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        let t = l.trim_start();
        if let Some(a) = t.strip_prefix("- alert:") {
            alert = a.trim().to_string();
        } else if let Some(e) = t.strip_prefix("expr:") {
            let e = e.trim();
            let expr = if e.starts_with('>') || e.starts_with('|') {
                let indent = l.len() - t.len();
                let mut block = Vec::new();
                while i + 1 < lines.len() {
                    let n = lines[i + 1];
                    if n.trim().is_empty() || n.len() - n.trim_start().len() > indent {
                        block.push(n.trim());
                        i += 1;
                    } else {
                        break;
                    }
                }
                block.join(" ")
            } else {
                e.trim_matches('\'').trim_matches('"').to_string()
            };
            assert!(!alert.is_empty(), "expr before any alert: {expr}");
            out.push((alert.clone(), expr));
        }
        i += 1;
    }
    assert!(out.len() >= 8, "alert rules not found: {out:?}");
    out
}

/// A JSON value, enough to walk the dashboard.
#[derive(Debug)]
enum Json {
    Null,
    Bool,
    Num,
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

struct JsonParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl JsonParser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn fail(&self, what: &str) -> ! {
        panic!("natgw.json: {what} at byte {}", self.i)
    }

    fn eat(&mut self, b: u8) {
        self.ws();
        if self.s.get(self.i) != Some(&b) {
            self.fail(&format!("expected {:?}", b as char));
        }
        self.i += 1;
    }

    fn string(&mut self) -> String {
        self.eat(b'"');
        let mut out = Vec::new();
        loop {
            let Some(&b) = self.s.get(self.i) else {
                self.fail("unterminated string")
            };
            self.i += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    let e = self.s.get(self.i).copied().unwrap_or(0);
                    self.i += 1;
                    match e {
                        b'"' | b'\\' | b'/' => out.push(e),
                        b'n' => out.push(b'\n'),
                        b't' => out.push(b'\t'),
                        b'r' => out.push(b'\r'),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'u' => {
                            let hex = std::str::from_utf8(&self.s[self.i..self.i + 4]).unwrap();
                            let cp = u32::from_str_radix(hex, 16)
                                .unwrap_or_else(|_| self.fail("bad \\u escape"));
                            self.i += 4;
                            let ch = char::from_u32(cp).unwrap_or('\u{fffd}');
                            out.extend(ch.to_string().bytes());
                        }
                        _ => self.fail("bad escape"),
                    }
                }
                b if b < 0x20 => self.fail("control character in a string"),
                b => out.push(b),
            }
        }
        String::from_utf8(out).unwrap_or_else(|_| self.fail("string not UTF-8"))
    }

    fn value(&mut self) -> Json {
        self.ws();
        match self.s.get(self.i) {
            Some(b'{') => {
                self.i += 1;
                let mut fields = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b'}') {
                    self.i += 1;
                    return Json::Obj(fields);
                }
                loop {
                    let k = self.string();
                    self.eat(b':');
                    fields.push((k, self.value()));
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Json::Obj(fields);
                        }
                        _ => self.fail("expected , or }"),
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b']') {
                    self.i += 1;
                    return Json::Arr(items);
                }
                loop {
                    items.push(self.value());
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Json::Arr(items);
                        }
                        _ => self.fail("expected , or ]"),
                    }
                }
            }
            Some(b'"') => Json::Str(self.string()),
            Some(b't') if self.s[self.i..].starts_with(b"true") => {
                self.i += 4;
                Json::Bool
            }
            Some(b'f') if self.s[self.i..].starts_with(b"false") => {
                self.i += 5;
                Json::Bool
            }
            Some(b'n') if self.s[self.i..].starts_with(b"null") => {
                self.i += 4;
                Json::Null
            }
            Some(b'-' | b'0'..=b'9') => {
                let start = self.i;
                while self.i < self.s.len()
                    && matches!(
                        self.s[self.i],
                        b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
                    )
                {
                    self.i += 1;
                }
                std::str::from_utf8(&self.s[start..self.i])
                    .unwrap()
                    .parse::<f64>()
                    .unwrap_or_else(|_| self.fail("bad number"));
                Json::Num
            }
            _ => self.fail("expected a value"),
        }
    }
}

fn parse_json(text: &str) -> Json {
    let mut p = JsonParser {
        s: text.as_bytes(),
        i: 0,
    };
    let v = p.value();
    p.ws();
    if p.i != p.s.len() {
        p.fail("trailing data");
    }
    v
}

/// Every string value under a key named `key`, anywhere in `v`, with its JSON path.
fn strings_under(v: &Json, key: &str, path: &str, out: &mut Vec<(String, String)>) {
    match v {
        Json::Obj(fields) => {
            for (k, x) in fields {
                let p = format!("{path}.{k}");
                if k == key
                    && let Json::Str(s) = x
                {
                    out.push((p.clone(), s.clone()));
                }
                strings_under(x, key, &p, out);
            }
        }
        Json::Arr(items) => {
            for (i, x) in items.iter().enumerate() {
                strings_under(x, key, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// `(where, text)`: a JSON path or rule, and what stands there.
type Located = (String, String);

/// The dashboard's PromQL: `(where, expr)` of every panel target and annotation (`expr`),
/// and the metric of every `label_values(metric, label)` variable query.
fn dashboard_exprs() -> (Vec<Located>, Vec<Located>) {
    let v = parse_json(&read("deploy/grafana/natgw.json"));
    let mut exprs = Vec::new();
    strings_under(&v, "expr", "", &mut exprs);
    let mut queries = Vec::new();
    strings_under(&v, "query", "", &mut queries);
    strings_under(&v, "definition", "", &mut queries);
    let mut label_values = Vec::new();
    for (p, q) in queries {
        if q == "prometheus" {
            continue; // the data source variable's plugin type
        }
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{p}: variable query {q:?} is not label_values(...)"));
        let (metric, _label) = inner
            .rsplit_once(',')
            .unwrap_or_else(|| panic!("{p}: {q:?}"));
        label_values.push((p, metric.trim().to_string()));
    }
    assert!(
        exprs.len() >= 20,
        "dashboard expressions not found: {exprs:?}"
    );
    (exprs, label_values)
}

#[test]
fn alert_rules_and_dashboard_use_only_contract_names() {
    let c = contract();
    let mut uses: Vec<(String, String)> = Vec::new();
    for (alert, e) in rule_exprs() {
        for n in metric_names(&e) {
            uses.push((format!("natgw-alerts.yml {alert}"), n));
        }
    }
    let (exprs, label_values) = dashboard_exprs();
    for (p, e) in &exprs {
        for n in metric_names(e) {
            uses.push((format!("natgw.json {p}"), n));
        }
    }
    for (p, selector) in label_values {
        for n in metric_names(&selector) {
            uses.push((format!("natgw.json {p}"), n));
        }
    }
    let unknown: Vec<String> = uses
        .iter()
        .filter(|(_, n)| contract_name(&c, n).is_none())
        .map(|(w, n)| format!("{w}: {n}"))
        .collect();
    assert!(
        unknown.is_empty(),
        "metric names not in deploy/prometheus/README.md's contract:\n{}",
        unknown.join("\n")
    );
    let used: BTreeSet<String> = uses
        .iter()
        .filter_map(|(_, n)| contract_name(&c, n))
        .collect();
    // The issue's list: each of these is on the dashboard or in an alert.
    for must in [
        "natgw_rx_bytes_total",
        "natgw_sessions_active",
        "natgw_pool_ports_used",
        "natgw_drops_total",
        "natgw_batch_seconds",
        "natgw_reloads_total",
        "natgw_ready",
        "natgw_worker_up",
        "natgw_xsk_rx_ring_full_total",
        "natgw_session_table_capacity",
    ] {
        assert!(used.contains(must), "{must} is used nowhere");
    }
}

// ---------------------------------------------------------------------------------------
// promtool
// ---------------------------------------------------------------------------------------

/// promtool's path, or None (outside CI) to skip.
fn promtool() -> Option<&'static str> {
    match Command::new("promtool").arg("--version").output() {
        Ok(o) if o.status.success() => Some("promtool"),
        r => {
            assert!(
                !ci(),
                "promtool is required under CI (apt-get install prometheus): {r:?}"
            );
            eprintln!("SKIPPED: promtool not installed");
            None
        }
    }
}

fn promtool_ok(args: &[&str], dir: &Path) -> String {
    let o = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn promtool_accepts_rules_config_and_their_unit_tests() {
    if promtool().is_none() {
        return;
    }
    let dir = repo().join("deploy/prometheus");
    promtool_ok(&["check", "rules", "natgw-alerts.yml"], &dir);
    promtool_ok(&["check", "config", "prometheus.yml"], &dir);
    let out = promtool_ok(&["test", "rules", "natgw-alerts.test.yml"], &dir);
    assert!(out.contains("SUCCESS"), "{out}");
}

/// Every alert of natgw-alerts.yml has a test case in natgw-alerts.test.yml where it fires
/// (`exp_alerts` with entries) and one where it does not (`exp_alerts: []`).
#[test]
fn every_alert_has_a_firing_and_a_quiet_test_case() {
    let text = read("deploy/prometheus/natgw-alerts.test.yml");
    let mut firing: BTreeSet<String> = BTreeSet::new();
    let mut quiet: BTreeSet<String> = BTreeSet::new();
    let mut alert: Option<String> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(a) = t.strip_prefix("alertname:") {
            alert = Some(a.trim().to_string());
        } else if let Some(rest) = t.strip_prefix("exp_alerts:") {
            let a = alert
                .take()
                .unwrap_or_else(|| panic!("exp_alerts without alertname: {line}"));
            if rest.trim() == "[]" {
                quiet.insert(a);
            } else {
                firing.insert(a);
            }
        }
    }
    let alerts: BTreeSet<String> = rule_exprs().into_iter().map(|(a, _)| a).collect();
    for a in &alerts {
        assert!(firing.contains(a), "{a}: no test case where it fires");
        assert!(quiet.contains(a), "{a}: no test case where it stays quiet");
    }
    for a in firing.union(&quiet) {
        assert!(
            alerts.contains(a),
            "test case for an alert that does not exist: {a}"
        );
    }
}

/// The dashboard's expressions are valid PromQL: promtool checks them as recording rules,
/// with Grafana's variables replaced by what Grafana would put there.
#[test]
fn dashboard_expressions_are_valid_promql() {
    if promtool().is_none() {
        return;
    }
    let (exprs, _) = dashboard_exprs();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, e)) in exprs.iter().enumerate() {
        let e = e
            .replace("$__rate_interval", "1m")
            .replace("$__interval", "15s")
            .replace("$__range", "1h")
            .replace("$instance", ".+");
        assert!(
            !e.contains('$'),
            "a Grafana variable the test does not know: {e}"
        );
        // A YAML single-quoted scalar: quotes doubled.
        rules.push_str(&format!(
            "      - record: dashboard:expr{i}\n        expr: '{}'\n",
            e.replace('\'', "''")
        ));
    }
    let dir = std::env::temp_dir().join(format!("natgw-dashboard-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("dashboard.yml"), &rules).unwrap();
    let o = Command::new("promtool")
        .args(["check", "rules", "dashboard.yml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        o.status.success(),
        "promtool rejects the dashboard's expressions:\n{}{}\n{rules}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

// ---------------------------------------------------------------------------------------
// The contract against natgw's exposition
// ---------------------------------------------------------------------------------------

/// A gateway handle of two workers with every kind of series natgw renders (the XDP
/// program's drop counters only as root, which loading the program needs).
fn handle() -> (Handle, bool) {
    let cfg = natgw::config::parse(&read("deploy/examples/minimal.toml")).unwrap();
    let rules = natgw::nat::Rules::new(&cfg, Arc::new(natgw::nat::ports::BlockPartition::new(2)));
    // Loading the program (not attaching it) needs CAP_BPF; the program is dropped at once,
    // its drop counter map stays open through `XdpDrops`.
    let xdp_drops: Vec<_> = match natgw::dataplane::xdp::XdpProgram::load(1) {
        Ok(p) => vec![("lo".to_string(), p.drops())],
        Err(e) => {
            assert!(
                !ci(),
                "loading natgw's XDP program (for natgw_xdp_drops_total) under CI: {e}"
            );
            eprintln!("natgw_xdp_drops_total not checked: loading the XDP program: {e}");
            Vec::new()
        }
    };
    let have_xdp = !xdp_drops.is_empty();
    let h = Handle {
        counters: (0..2).map(|_| Arc::default()).collect(),
        dp: (0..2).map(|_| Arc::default()).collect(),
        control: Vec::new(),
        rules: Arc::new(rules),
        neigh: Arc::new(natgw::dataplane::neigh::NeighTable::new(16)),
        started: std::time::Instant::now(),
        xdp_modes: Vec::new(),
        copy_fallbacks: 0,
        // `lo` exists everywhere: natgw_kernel_forwarding reads its sysctl.
        interfaces: vec!["lo".into()],
        health: Arc::new(Health {
            xdp_drops,
            link_up: vec![("lo".into(), Arc::new(AtomicBool::new(true)))],
        }),
        pass: Vec::new(),
        config: Arc::new(cfg),
        generation: 1,
    };
    (h, have_xdp)
}

/// Per family of the exposition: its `# TYPE` and the label names of its samples (without a
/// histogram's `le`).
fn families(text: &str) -> BTreeMap<String, (String, BTreeSet<BTreeSet<String>>)> {
    let mut f: BTreeMap<String, (String, BTreeSet<BTreeSet<String>>)> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            f.insert(name.to_string(), (kind.to_string(), BTreeSet::new()));
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, labels) = match line.split_once('{') {
            Some((s, rest)) => {
                let inner = &rest[..rest.rfind('}').unwrap()];
                let names: BTreeSet<String> = inner
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(|p| p.split_once('=').unwrap().0.to_string())
                    .filter(|n| n != "le")
                    .collect();
                (s.to_string(), names)
            }
            None => (
                line.split_whitespace().next().unwrap().to_string(),
                BTreeSet::new(),
            ),
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                series
                    .strip_suffix(s)
                    .filter(|b| f.get(*b).is_some_and(|(k, _)| k == "histogram"))
            })
            .unwrap_or(&series)
            .to_string();
        f.get_mut(&family)
            .unwrap_or_else(|| panic!("sample of {series} without # TYPE"))
            .1
            .insert(labels);
    }
    f
}

/// Compares `text`, natgw's exposition, with the contract: every contract name not
/// skipped must be exported with the contract's type and label names, or be in `PENDING`;
/// a name in `PENDING` must not be exported as the contract says.
fn check_contract(text: &str, skip: &dyn Fn(&str) -> bool) {
    let c = contract();
    let exported = families(text);
    let mut wrong = Vec::new();
    let mut stale = Vec::new();
    for (name, want) in &c {
        // Prometheus's own (up), or not checkable in this exposition.
        if !name.starts_with("natgw_") || skip(name) {
            continue;
        }
        let matches = exported.get(name).map(|(kind, label_sets)| {
            kind == &want.kind
                && !label_sets.is_empty()
                && label_sets.iter().all(|l| *l == want.labels)
        });
        let pending = PENDING.contains(&name.as_str());
        match (matches, pending) {
            (Some(true), false) | (None, true) | (Some(false), true) => {}
            (Some(true), true) => stale.push(name.clone()),
            (Some(false), false) => wrong.push(format!(
                "{name}: exported as {:?}, the contract says {} {:?}",
                exported[name], want.kind, want.labels
            )),
            (None, false) => wrong.push(format!("{name}: not exported")),
        }
    }
    for p in PENDING.iter().chain(LIVE_ONLY) {
        assert!(
            c.contains_key(*p),
            "PENDING or LIVE_ONLY names {p}, which is not in the contract"
        );
    }
    assert!(
        wrong.is_empty(),
        "contract names natgw does not export as written in deploy/prometheus/README.md \
         (fix natgw or the contract, or list them in PENDING):\n{}\n\nexposition:\n{text}",
        wrong.join("\n")
    );
    assert!(
        stale.is_empty(),
        "natgw exports these as the contract says: remove them from PENDING: {stale:?}"
    );
}

#[test]
fn natgw_exports_every_contract_name_with_its_type_and_labels() {
    let (h, have_xdp) = handle();
    let text = Metrics::new().render(&h);
    check_contract(&text, &|name| {
        LIVE_ONLY.contains(&name) || (name == "natgw_xdp_drops_total" && !have_xdp)
    });
}

/// The whole contract against a running natgw that forwards a ping: the live-only names
/// too. Needs root and `ip` (under `CI=true` a failure without them); topology `dpm`.
#[test]
fn natgw_exports_every_contract_name_while_forwarding() {
    use natgw_testbed::netns::prerequisites;
    use natgw_testbed::process::NatgwProcess;
    use natgw_testbed::{Topology, TopologySpec};
    use std::time::{Duration, Instant};
    if !prerequisites("contract_live") {
        return;
    }
    let spec = TopologySpec::new("dpm");
    Topology::cleanup_stale(&spec.tag).unwrap();
    let topo = Topology::build(&spec).unwrap_or_else(|e| panic!("building {spec:?}: {e}"));
    let natgw = NatgwProcess::start(
        env!("CARGO_BIN_EXE_natgw"),
        &topo,
        &topo.natgw_config(),
        "contract",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = topo.ping(topo.host_ns(0), topo.server_addr(), Duration::from_secs(1)) {
        assert!(
            Instant::now() < deadline,
            "no ping through natgw: {e}\n{}",
            natgw.stderr()
        );
    }
    // Pool and socket figures are published about once a second.
    std::thread::sleep(Duration::from_millis(1500));
    let text = natgw_testbed::lab::api_get(topo.gw_ns(), "/metrics").unwrap();
    check_contract(&text, &|_| false);
}
