//! API edits of static port forwards and 1:1 mappings (`PUT /mappings`, `DELETE /mappings`).
//!
//! An edit goes through the same steps as a reload of the files, in this order, and nothing
//! changes until a step has succeeded:
//! 1. the new configuration is the running one with the change, in the realm's mappings file
//!    (inline mappings belong to the configuration file and are not edited here);
//! 2. it is validated exactly as a reload would: written out as the configuration text plus
//!    every realm's mappings file text and parsed again, so errors are the same key paths
//!    (`mappings-office.toml: static[12].external: ...`) and the result is what a restart loads;
//! 3. it is applied through `Handle::reload` (sessions of other mappings are untouched);
//! 4. only then the mappings file is written back atomically (`write_atomic`). If that fails
//!    the previous configuration is applied again, so the running configuration never differs
//!    from the files: a later reload (SIGHUP) would otherwise silently undo the edit.
//!
//! Edits and reloads take `State::edits`, one at a time: a reload reading the files between an
//! edit's apply and its write would undo the edit.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;

use super::{State, json_str};
use crate::config::{self, Config, ConfigError, MappingsFile, OneToOne, Protocol, StaticMapping};

/// One edit.
#[derive(Clone, Debug, PartialEq)]
pub enum Edit {
    /// Adds, or replaces the one with the same protocol and external endpoint.
    PutStatic {
        realm: String,
        m: StaticMapping,
    },
    /// Adds, or replaces the one with the same external address.
    PutOneToOne {
        realm: String,
        m: OneToOne,
    },
    DelStatic {
        realm: String,
        protocol: Protocol,
        external: SocketAddrV4,
    },
    DelOneToOne {
        realm: String,
        external: Ipv4Addr,
    },
}

/// Why an edit was refused or failed: an HTTP status, the field and the reason. Nothing
/// changed unless `status` is 500 and the reason says so.
#[derive(Clone, Debug, PartialEq)]
pub struct EditError {
    pub status: u16,
    pub field: String,
    pub reason: String,
}

impl EditError {
    fn bad(field: impl Into<String>, reason: impl Into<String>) -> EditError {
        EditError {
            status: 400,
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// `{"ok":false,"error":"field: reason","field":...,"reason":...}`.
    pub fn json(&self) -> String {
        format!(
            "{{\"ok\":false,\"error\":{},\"field\":{},\"reason\":{}}}",
            json_str(&format!("{}: {}", self.field, self.reason)),
            json_str(&self.field),
            json_str(&self.reason)
        )
    }
}

impl From<ConfigError> for EditError {
    fn from(e: ConfigError) -> EditError {
        EditError::bad(e.field, e.reason)
    }
}

fn protocol(v: &str) -> Result<Protocol, EditError> {
    match v {
        "tcp" => Ok(Protocol::TCP),
        "udp" => Ok(Protocol::UDP),
        _ => Err(EditError::bad(
            "protocol",
            format!("{v:?} is not one of \"tcp\", \"udp\""),
        )),
    }
}

fn socket(field: &str, v: &str) -> Result<SocketAddrV4, EditError> {
    v.parse()
        .map_err(|_| EditError::bad(field, format!("{v:?} is not an IPv4 address:port")))
}

fn addr(field: &str, v: &str) -> Result<Ipv4Addr, EditError> {
    v.parse()
        .map_err(|_| EditError::bad(field, format!("{v:?} is not an IPv4 address")))
}

/// The body of `PUT /mappings`: `{"realm", "protocol", "external", "internal"}` or
/// `{"realm", "one_to_one": {"external", "internal"}}`.
pub fn parse_put(body: &[u8]) -> Result<Edit, EditError> {
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| EditError::bad("body", format!("not JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| EditError::bad("body", "must be a JSON object"))?;
    let text = |o: &serde_json::Map<String, serde_json::Value>, k: &str, field: &str| {
        o.get(k)
            .ok_or_else(|| EditError::bad(field, "is required"))?
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| EditError::bad(field, "must be a string"))
    };
    let realm = text(obj, "realm", "realm")?;
    if let Some(one) = obj.get("one_to_one") {
        let known = ["realm", "one_to_one"];
        if let Some(k) = obj.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(EditError::bad(k.as_str(), "unknown key next to one_to_one"));
        }
        let one = one
            .as_object()
            .ok_or_else(|| EditError::bad("one_to_one", "must be an object"))?;
        let external = addr(
            "one_to_one.external",
            &text(one, "external", "one_to_one.external")?,
        )?;
        let internal = addr(
            "one_to_one.internal",
            &text(one, "internal", "one_to_one.internal")?,
        )?;
        return Ok(Edit::PutOneToOne {
            realm,
            m: OneToOne { external, internal },
        });
    }
    let known = ["realm", "protocol", "external", "internal"];
    if let Some(k) = obj.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(EditError::bad(k.as_str(), "unknown key"));
    }
    Ok(Edit::PutStatic {
        realm,
        m: StaticMapping {
            protocol: protocol(&text(obj, "protocol", "protocol")?)?,
            external: socket("external", &text(obj, "external", "external")?)?,
            internal: socket("internal", &text(obj, "internal", "internal")?)?,
        },
    })
}

/// The query of `DELETE /mappings`: `realm=R&protocol=tcp&external=A:P` removes a static
/// forward, `realm=R&external=A` (no protocol) a 1:1 mapping.
pub fn parse_delete(query: &str) -> Result<Edit, EditError> {
    let mut kv: HashMap<&str, String> = HashMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if !["realm", "protocol", "external"].contains(&k) {
            return Err(EditError::bad(
                k,
                "unknown parameter (realm, protocol, external)",
            ));
        }
        let v = super::sessions::unescape(k, v).map_err(|e| EditError::bad(e.field, e.reason))?;
        kv.insert(k, v);
    }
    let realm = kv
        .remove("realm")
        .ok_or_else(|| EditError::bad("realm", "is required"))?;
    let external = kv
        .remove("external")
        .ok_or_else(|| EditError::bad("external", "is required"))?;
    Ok(match kv.remove("protocol") {
        Some(p) => Edit::DelStatic {
            realm,
            protocol: protocol(&p)?,
            external: socket("external", &external)?,
        },
        None => Edit::DelOneToOne {
            realm,
            external: addr("external", &external)?,
        },
    })
}

/// The query of `GET /mappings`: `realm=R` (a realm of `cfg`) or nothing.
pub fn realm_filter(query: &str, cfg: &Config) -> Result<Option<String>, EditError> {
    let mut realm = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k != "realm" {
            return Err(EditError::bad(k, "unknown parameter (realm)"));
        }
        let v = super::sessions::unescape(k, v).map_err(|e| EditError::bad(e.field, e.reason))?;
        if !cfg.realms.iter().any(|r| r.name == v) {
            return Err(EditError::bad("realm", format!("no realm named {v:?}")));
        }
        realm = Some(v);
    }
    Ok(realm)
}

/// An applied edit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edited {
    pub generation: u64,
    /// "added", "replaced" or "removed".
    pub action: &'static str,
    /// The mappings file written.
    pub file: String,
}

impl Edited {
    pub fn json(&self) -> String {
        format!(
            "{{\"ok\":true,\"generation\":{},\"action\":\"{}\",\"file\":{}}}",
            self.generation,
            self.action,
            json_str(&self.file)
        )
    }
}

/// The running configuration with `edit` made (step 1): the realm's index and what was done.
pub fn edited(running: &Config, edit: &Edit) -> Result<(Config, usize, &'static str), EditError> {
    let name = match edit {
        Edit::PutStatic { realm, .. }
        | Edit::PutOneToOne { realm, .. }
        | Edit::DelStatic { realm, .. }
        | Edit::DelOneToOne { realm, .. } => realm,
    };
    let i = running
        .realms
        .iter()
        .position(|r| &r.name == name)
        .ok_or_else(|| EditError::bad("realm", format!("no realm named {name:?}")))?;
    let mut cfg = running.clone();
    let r = &mut cfg.realms[i];
    let Some(mf) = r.mappings_file.clone() else {
        return Err(EditError::bad(
            "realm",
            format!(
                "realm {name:?} has no mappings_file: API edits are kept in a realm's mappings \
                 file (docs/config.md)"
            ),
        ));
    };
    let inline = |key: &str, j: usize| {
        EditError::bad(
            MappingsFile::field(Some(&mf), i, key, j),
            "defined inline in the configuration file; change it there",
        )
    };
    let missing = |what: String| EditError {
        status: 404,
        field: "external".into(),
        reason: format!("realm {name:?} has no {what}"),
    };
    let action = match edit {
        Edit::PutStatic { m, .. } => {
            match r
                .static_mappings
                .iter()
                .position(|s| s.protocol == m.protocol && s.external == m.external)
            {
                Some(j) if j < mf.statics_from => return Err(inline("static", j)),
                Some(j) => {
                    r.static_mappings[j] = m.clone();
                    "replaced"
                }
                None => {
                    r.static_mappings.push(m.clone());
                    "added"
                }
            }
        }
        Edit::PutOneToOne { m, .. } => {
            match r.one_to_one.iter().position(|o| o.external == m.external) {
                Some(j) if j < mf.one_to_one_from => return Err(inline("one_to_one", j)),
                Some(j) => {
                    r.one_to_one[j] = m.clone();
                    "replaced"
                }
                None => {
                    r.one_to_one.push(m.clone());
                    "added"
                }
            }
        }
        Edit::DelStatic {
            protocol, external, ..
        } => {
            match r
                .static_mappings
                .iter()
                .position(|s| s.protocol == *protocol && s.external == *external)
            {
                Some(j) if j < mf.statics_from => return Err(inline("static", j)),
                Some(j) => {
                    r.static_mappings.remove(j);
                    "removed"
                }
                None => return Err(missing(format!("{protocol} forward of {external}"))),
            }
        }
        Edit::DelOneToOne { external, .. } => {
            match r.one_to_one.iter().position(|o| o.external == *external) {
                Some(j) if j < mf.one_to_one_from => return Err(inline("one_to_one", j)),
                Some(j) => {
                    r.one_to_one.remove(j);
                    "removed"
                }
                None => return Err(missing(format!("1:1 mapping of {external}"))),
            }
        }
    };
    Ok((cfg, i, action))
}

/// Step 2: `cfg` validated as a reload of the files would validate it, the configuration file
/// at `config_path` holding `cfg.to_toml()` and each mappings file its realm's entries.
pub fn revalidate(cfg: &Config, config_path: &Path) -> Result<Config, ConfigError> {
    let files: HashMap<&Path, String> = cfg
        .realms
        .iter()
        .filter_map(|r| {
            r.mappings_file
                .as_ref()
                .map(|m| (m.path.as_path(), r.mappings_toml()))
        })
        .collect();
    config::parse_with(&cfg.to_toml(), config::base_dir(config_path), &mut |p| {
        files.get(p).cloned().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "not a mappings file of the running configuration",
            )
        })
    })
}

/// Makes `edit` (all four steps, module docs), one edit or reload at a time.
pub fn apply(state: &State, edit: &Edit) -> Result<Edited, EditError> {
    let internal = |reason: &str| EditError {
        status: 500,
        field: "internal".into(),
        reason: reason.into(),
    };
    let _one_at_a_time = state.edits.lock().map_err(|_| internal("poisoned lock"))?;
    let running = state
        .handle()
        .ok_or_else(|| internal("poisoned lock"))?
        .config
        .clone();
    let (cfg, i, action) = edited(&running, edit)?;
    let new = revalidate(&cfg, &state.config_path)?;
    let mut h = state.handle.lock().map_err(|_| internal("poisoned lock"))?;
    let r = h.reload(&new);
    state.metrics.reloads.record(r.is_ok());
    let generation = r.map_err(|e| EditError::bad("mappings", e.to_string()))?;
    state.metrics.reloads.set_generation(generation);
    let realm = &new.realms[i];
    let mf = realm
        .mappings_file
        .as_ref()
        .ok_or_else(|| internal("the realm lost its mappings file"))?;
    if let Err(e) = write_atomic(&mf.path, &realm.mappings_toml()) {
        // Back to the configuration the files still hold (module docs).
        let back = h.reload(&running);
        if let Ok(g) = &back {
            state.metrics.reloads.set_generation(*g);
        }
        return Err(EditError {
            status: 500,
            field: realm_file_field(i),
            reason: match back {
                Ok(g) => format!(
                    "writing {} failed ({e}); the change was undone (generation {g})",
                    mf.path.display()
                ),
                Err(b) => format!(
                    "writing {} failed ({e}) and undoing the change failed too ({b}): the \
                     change is in force until the next reload or restart",
                    mf.path.display()
                ),
            },
        });
    }
    Ok(Edited {
        generation,
        action,
        file: mf.path.display().to_string(),
    })
}

fn realm_file_field(i: usize) -> String {
    format!("realm[{i}].mappings_file")
}

/// Replaces the file at `path` with `text` so that a crash leaves the old or the new file,
/// never a part: written to a temporary file in the same directory (a rename is atomic only
/// within one file system), fsynced, renamed over `path`, and the directory fsynced so the
/// rename itself survives a power loss.
pub fn write_atomic(path: &Path, text: &str) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        // Keep the file's mode (0644 or what the operator chose) across the replacement.
        if let Ok(meta) = std::fs::metadata(path) {
            f.set_permissions(meta.permissions())?;
        }
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONF: &str = "[outside]\ninterface = \"eth1\"\naddress = \"192.168.1.2\"\n\
        gateway = \"192.168.1.1\"\n[[inside]]\ninterface = \"eth0\"\n\
        [[realm]]\nname = \"r\"\ninterface = \"eth0\"\nprefixes = [\"10.0.0.0/24\"]\n\
        gateway = \"10.0.0.1\"\npool = [\"192.168.1.10\"]\n\
        static = [{ protocol = \"tcp\", external = \"192.168.1.10:22\", internal = \"10.0.0.5:22\" }]\n\
        mappings_file = \"m.toml\"\n";

    const FILE: &str = "static = [\n\
        { protocol = \"tcp\", external = \"192.168.1.10:80\", internal = \"10.0.0.5:80\" },\n\
        { protocol = \"udp\", external = \"192.168.1.10:53\", internal = \"10.0.0.6:53\" },\n]\n\
        one_to_one = [{ external = \"192.168.1.20\", internal = \"10.0.0.20\" }]\n";

    fn files(text: &str) -> impl FnMut(&Path) -> io::Result<String> + '_ {
        move |p: &Path| {
            if p == Path::new("/etc/natgw/m.toml") {
                Ok(text.to_string())
            } else {
                Err(io::Error::new(io::ErrorKind::NotFound, "no such file"))
            }
        }
    }

    fn cfg(file: &str) -> Result<Config, ConfigError> {
        config::parse_with(CONF, Path::new("/etc/natgw"), &mut files(file))
    }

    #[test]
    fn file_entries_follow_the_inline_ones() {
        let c = cfg(FILE).unwrap();
        let r = &c.realms[0];
        assert_eq!(r.static_mappings.len(), 3);
        assert_eq!(r.static_mappings[0].external.port(), 22);
        assert_eq!(r.static_mappings[2].protocol, Protocol::UDP);
        assert_eq!(r.one_to_one.len(), 1);
        let m = r.mappings_file.as_ref().unwrap();
        assert_eq!(m.path, Path::new("/etc/natgw/m.toml"));
        assert_eq!((m.statics_from, m.one_to_one_from), (1, 0));
        // The file's text round-trips, and the effective configuration names the file.
        assert!(c.to_toml().contains("mappings_file = \"m.toml\""));
        assert_eq!(cfg(&r.mappings_toml()).unwrap(), c, "{}", r.mappings_toml());
        assert_eq!(
            revalidate(&c, Path::new("/etc/natgw/natgw.toml")).unwrap(),
            c
        );
    }

    #[test]
    fn errors_name_the_file_and_the_entry() {
        let e = cfg(&FILE.replace("192.168.1.10:53", "192.168.1.99:53")).unwrap_err();
        assert_eq!(e.field, "m.toml: static[1].external");
        assert!(e.reason.contains("pool"), "{e}");
        // A duplicate of an inline forward names both places.
        let e = cfg(&FILE.replace("192.168.1.10:80", "192.168.1.10:22")).unwrap_err();
        assert_eq!(e.field, "m.toml: static[0].external");
        assert!(e.reason.contains("realm[0].static[0]"), "{e}");
        let e = cfg(&FILE
            .replace("10.0.0.6:53", "10.0.0.5:80")
            .replace("udp", "tcp"))
        .unwrap_err();
        assert_eq!(e.field, "m.toml: static[1].internal");
        assert!(e.reason.contains("m.toml: static[0]"), "{e}");
        let e =
            cfg("static = [{ protocol = \"tcp\", external = \"192.168.1.10:81\" }]").unwrap_err();
        assert_eq!(e.field, "m.toml: static[0].internal");
        let e = cfg("statics = []").unwrap_err();
        assert!(e.field.starts_with("m.toml"), "{e}");
        let e = cfg("one_to_one = [{ external = \"192.168.1.10\", internal = \"10.0.0.9\" }]")
            .unwrap_err();
        assert_eq!(e.field, "m.toml: one_to_one[0].external");
        let e = config::parse_with(CONF, Path::new("/nowhere"), &mut files(FILE)).unwrap_err();
        assert_eq!(e.field, "realm[0].mappings_file");
        assert!(e.reason.contains("/nowhere/m.toml"), "{e}");
    }

    #[test]
    fn edits_change_only_the_file_part() {
        let c = cfg(FILE).unwrap();
        let put = parse_put(
            br#"{"realm":"r","protocol":"tcp","external":"192.168.1.10:443","internal":"10.0.0.7:443"}"#,
        )
        .unwrap();
        let (n, i, action) = edited(&c, &put).unwrap();
        assert_eq!((i, action), (0, "added"));
        assert_eq!(n.realms[0].static_mappings.len(), 4);
        assert!(n.realms[0].mappings_toml().contains("10.0.0.7:443"));
        revalidate(&n, Path::new("/etc/natgw/natgw.toml")).unwrap();
        // The inline forward is the configuration file's.
        let put = parse_put(
            br#"{"realm":"r","protocol":"tcp","external":"192.168.1.10:22","internal":"10.0.0.8:22"}"#,
        )
        .unwrap();
        assert_eq!(edited(&c, &put).unwrap_err().field, "realm[0].static[0]");
        // Outside the pool: refused by the configuration's own validation.
        let put = parse_put(
            br#"{"realm":"r","protocol":"udp","external":"192.168.1.77:1","internal":"10.0.0.8:1"}"#,
        )
        .unwrap();
        let (n, _, _) = edited(&c, &put).unwrap();
        let e = revalidate(&n, Path::new("/etc/natgw/natgw.toml")).unwrap_err();
        assert_eq!(e.field, "m.toml: static[2].external");
        let del = parse_delete("realm=r&protocol=udp&external=192.168.1.10%3A53").unwrap();
        let (n, _, action) = edited(&c, &del).unwrap();
        assert_eq!(action, "removed");
        assert_eq!(n.realms[0].static_mappings.len(), 2);
        let del = parse_delete("realm=r&external=192.168.1.20").unwrap();
        assert_eq!(edited(&c, &del).unwrap().0.realms[0].one_to_one.len(), 0);
        let del = parse_delete("realm=r&protocol=tcp&external=192.168.1.10:9").unwrap();
        assert_eq!(edited(&c, &del).unwrap_err().status, 404);
        let one = parse_put(
            br#"{"realm":"r","one_to_one":{"external":"192.168.1.20","internal":"10.0.0.21"}}"#,
        )
        .unwrap();
        assert_eq!(edited(&c, &one).unwrap().2, "replaced");
        assert_eq!(realm_filter("realm=r", &c).unwrap().as_deref(), Some("r"));
        assert_eq!(realm_filter("", &c).unwrap(), None);
        assert_eq!(realm_filter("realm=x", &c).unwrap_err().field, "realm");
        let listed = super::super::mappings_json_of(&c, Some("r"));
        assert!(
            listed.contains(r#""mappings_file":"/etc/natgw/m.toml","inline_static":1,"#),
            "{listed}"
        );
    }

    #[test]
    fn bad_bodies_name_the_field() {
        for (body, field) in [
            (&br#"{"protocol":"tcp"}"#[..], "realm"),
            (br#"{"realm":"r","protocol":"sctp","external":"1.2.3.4:1","internal":"10.0.0.1:1"}"#, "protocol"),
            (br#"{"realm":"r","protocol":"tcp","external":"1.2.3.4","internal":"10.0.0.1:1"}"#, "external"),
            (br#"{"realm":"r","protocol":"tcp","external":"1.2.3.4:1"}"#, "internal"),
            (br#"{"realm":"r","one_to_one":{"external":"x"}}"#, "one_to_one.external"),
            (br#"{"realm":"r","color":"red"}"#, "color"),
            (b"[1]", "body"),
            (b"{", "body"),
        ] {
            assert_eq!(parse_put(body).unwrap_err().field, field);
        }
        assert_eq!(parse_delete("external=1.2.3.4").unwrap_err().field, "realm");
        assert_eq!(parse_delete("realm=r&x=1").unwrap_err().field, "x");
    }

    #[test]
    fn atomic_write_replaces_whole_files() {
        let dir = std::env::temp_dir().join(format!("natgw-mapw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("m.toml");
        std::fs::write(&p, "old").unwrap();
        write_atomic(&p, "new text\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new text\n");
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(names.len(), 1);
        // A directory that does not exist: an error, and nothing written.
        assert!(write_atomic(&dir.join("no/m.toml"), "x").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A mappings file of `n` TCP forwards on 192.168.1.10-192.168.1.12 to 10.0.0.0/8.
    pub(crate) fn forwards(n: u32) -> String {
        let mut o = String::from("static = [\n");
        for k in 0..n {
            o.push_str(&format!(
                "    {{ protocol = \"tcp\", external = \"192.168.1.{}:{}\", internal = \"10.{}.{}.{}:80\" }},\n",
                10 + k / 60000,
                1 + k % 60000,
                k / 250 / 250,
                (k / 250) % 250,
                1 + k % 250
            ));
        }
        o.push_str("]\n");
        o
    }

    /// What an API edit costs at 100k static forwards, step by step (numbers in
    /// bench/README.md): `cargo test --release --lib hundred_thousand -- --ignored --nocapture`
    /// (under the machine-wide lock). The worker's part is `set_rules` for a `PUT` (one
    /// forward added), a reload of the same files and a `DELETE` (that forward removed);
    /// the previous rules are dropped afterwards, apart, as the management thread does
    /// (`Handle::reload` keeps them until every worker has acknowledged).
    #[test]
    #[ignore = "timing: run with --release"]
    fn hundred_thousand_forwards_step_by_step() {
        use std::sync::Arc;
        use std::time::{Duration, Instant};
        let conf = CONF
            .replace("[\"10.0.0.0/24\"]", "[\"10.0.0.0/8\"]")
            .replace("pool = [\"192.168.1.10\"]", "pool = [\"192.168.1.10-192.168.1.12\"]")
            .replace("static = [{ protocol = \"tcp\", external = \"192.168.1.10:22\", internal = \"10.0.0.5:22\" }]\n", "");
        let text = forwards(100_000);
        for round in 0..3 {
            let t = Instant::now();
            let c = config::parse_with(&conf, Path::new("/etc/natgw"), &mut files(&text)).unwrap();
            let parse = t.elapsed();
            assert_eq!(c.realms[0].static_mappings.len(), 100_000);
            let part = Arc::new(crate::nat::ports::BlockPartition::new(1));
            let t = Instant::now();
            let rules = Arc::new(crate::nat::Rules::new(&c, part.clone()));
            let compile = t.elapsed();
            let mut e = crate::nat::Engine::new(0, rules, Arc::new(Default::default()));
            // One forward more, as `PUT /mappings` makes it.
            let put = parse_put(
                br#"{"realm":"r","protocol":"udp","external":"192.168.1.12:40000","internal":"10.9.9.9:1"}"#,
            )
            .unwrap();
            let t = Instant::now();
            let (n, _, _) = edited(&c, &put).unwrap();
            let n = revalidate(&n, Path::new("/etc/natgw/natgw.toml")).unwrap();
            let revalidate_t = t.elapsed();
            // Compiles `cfg` against the running rules, then applies it as a worker does:
            // (compile, set_rules, drop of the previous rules), and lets the worker walk
            // its table as its batch boundaries would, if the reload removed anything (a
            // reload finishes an earlier walk first): the number of walk steps and the
            // longest.
            let apply = |e: &mut crate::nat::Engine, cfg: &Config| {
                let t = Instant::now();
                let r = Arc::new(crate::nat::Rules::reload(cfg, part.clone(), e.rules()));
                let compile = t.elapsed();
                let previous = Arc::clone(e.rules());
                let t = Instant::now();
                e.set_rules(r);
                let set = t.elapsed();
                let t = Instant::now();
                drop(previous);
                let dropped = t.elapsed();
                let (mut steps, mut worst) = (0, Duration::ZERO);
                while e.reconciling() {
                    let t = Instant::now();
                    e.tick(1_000_000_000);
                    worst = worst.max(t.elapsed());
                    steps += 1;
                }
                (compile, set, dropped, steps, worst)
            };
            let (recompile, set_put, drop_put, walk_put, worst_put) = apply(&mut e, &n);
            let (_, set_same, _, walk_same, _) = apply(&mut e, &n);
            let (_, set_del, _, walk_del, worst_del) = apply(&mut e, &c);
            let dir = std::env::temp_dir().join(format!("natgw-map100k-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let body = n.realms[0].mappings_toml();
            let t = Instant::now();
            write_atomic(&dir.join("m.toml"), &body).unwrap();
            let write = t.elapsed();
            std::fs::remove_dir_all(&dir).unwrap();
            eprintln!(
                "round {round}: 100k forwards ({} bytes): parse+validate {parse:?}, compile \
                 {compile:?}; PUT: edit+revalidate {revalidate_t:?}, compile {recompile:?}, \
                 write_atomic {write:?}; worker set_rules: PUT {set_put:?} (walk: {walk_put} \
                 steps, longest {worst_put:?}), reload of the same {set_same:?} ({walk_same} \
                 steps), DELETE {set_del:?} ({walk_del} steps, longest {worst_del:?}); drop \
                 of the previous rules {drop_put:?}",
                text.len()
            );
        }
    }
}
