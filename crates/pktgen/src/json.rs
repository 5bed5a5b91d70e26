//! A small JSON writer for the reports (flat numbers, strings, nested objects and arrays);
//! the crate needs nothing more and so pulls in no serializer.

use std::fmt::Write as _;

/// A JSON value under construction.
pub enum Value {
    U(u64),
    F(f64),
    S(String),
    B(bool),
    Null,
    Obj(Obj),
    Arr(Vec<Value>),
}

/// An object with its keys in insertion order.
#[derive(Default)]
pub struct Obj(Vec<(&'static str, Value)>);

impl Obj {
    pub fn new() -> Obj {
        Obj(Vec::new())
    }

    pub fn u(mut self, k: &'static str, v: u64) -> Obj {
        self.0.push((k, Value::U(v)));
        self
    }

    pub fn f(mut self, k: &'static str, v: f64) -> Obj {
        self.0.push((k, Value::F(v)));
        self
    }

    pub fn s(mut self, k: &'static str, v: impl Into<String>) -> Obj {
        self.0.push((k, Value::S(v.into())));
        self
    }

    pub fn b(mut self, k: &'static str, v: bool) -> Obj {
        self.0.push((k, Value::B(v)));
        self
    }

    pub fn v(mut self, k: &'static str, v: Value) -> Obj {
        self.0.push((k, v));
        self
    }

    pub fn o(self, k: &'static str, v: Obj) -> Obj {
        self.v(k, Value::Obj(v))
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        write_obj(&mut s, self, 0);
        s.push('\n');
        s
    }
}

fn indent(s: &mut String, n: usize) {
    for _ in 0..n {
        s.push_str("  ");
    }
}

fn write_str(s: &mut String, v: &str) {
    s.push('"');
    for c in v.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
}

fn write_value(s: &mut String, v: &Value, depth: usize) {
    match v {
        Value::U(n) => {
            let _ = write!(s, "{n}");
        }
        Value::F(f) if f.is_finite() => {
            let _ = write!(s, "{f}");
        }
        Value::F(_) | Value::Null => s.push_str("null"),
        Value::S(t) => write_str(s, t),
        Value::B(b) => s.push_str(if *b { "true" } else { "false" }),
        Value::Obj(o) => write_obj(s, o, depth),
        Value::Arr(a) => {
            if a.is_empty() {
                s.push_str("[]");
                return;
            }
            s.push_str("[\n");
            for (i, x) in a.iter().enumerate() {
                indent(s, depth + 1);
                write_value(s, x, depth + 1);
                s.push_str(if i + 1 < a.len() { ",\n" } else { "\n" });
            }
            indent(s, depth);
            s.push(']');
        }
    }
}

fn write_obj(s: &mut String, o: &Obj, depth: usize) {
    if o.0.is_empty() {
        s.push_str("{}");
        return;
    }
    s.push_str("{\n");
    for (i, (k, v)) in o.0.iter().enumerate() {
        indent(s, depth + 1);
        write_str(s, k);
        s.push_str(": ");
        write_value(s, v, depth + 1);
        s.push_str(if i + 1 < o.0.len() { ",\n" } else { "\n" });
    }
    indent(s, depth);
    s.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_nested_json() {
        let o = Obj::new()
            .u("a", 1)
            .s("b", "x\"y")
            .f("c", 0.5)
            .f("nan", f64::NAN)
            .o("d", Obj::new().b("e", true))
            .v("f", Value::Arr(vec![Value::U(1), Value::Null]));
        assert_eq!(
            o.render(),
            "{\n  \"a\": 1,\n  \"b\": \"x\\\"y\",\n  \"c\": 0.5,\n  \"nan\": null,\n  \"d\": {\n    \"e\": true\n  },\n  \"f\": [\n    1,\n    null\n  ]\n}\n"
        );
    }
}
