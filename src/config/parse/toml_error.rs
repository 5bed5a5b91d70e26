//! toml/serde errors to a [`ConfigError`] that names the key path of the offending key or value,
//! found through the spans of a recovering parse of the same text.

use std::ops::Range;

use toml::de::{DeTable, DeValue};

use super::err;
use crate::config::ConfigError;

/// Turns a toml/serde error into a `ConfigError` naming the key path when the error's span can be
/// traced back to a key or value in the document; pure syntax errors get the field "syntax".
pub(super) fn serde_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let mut reason = e.message().trim_end().replace('\n', "; ");
    let mut field = None;
    if let Some(span) = e.span() {
        let (line, col) = line_col(text, span.start);
        reason.push_str(&format!(" (line {line}, column {col})"));
        // The recovering parser still yields the keys around a syntax error (a duplicate key, a
        // malformed value), which names the spot better than "syntax".
        let (doc, _) = DeTable::parse_recoverable(text);
        let mut best: Option<(usize, String)> = None;
        locate(doc.get_ref(), &span, "", &mut best);
        field = best.map(|(_, p)| p);
        // Recovery drops a duplicate key; its first occurrence is the nearest earlier key of
        // the same name.
        if field.is_none() && e.message().starts_with("duplicate key") {
            let name = text
                .get(span.clone())
                .unwrap_or("")
                .trim_matches(['"', '\'', ' ']);
            let mut prev: Option<(usize, String)> = None;
            find_prev_key(doc.get_ref(), name, span.start, "", &mut prev);
            field = prev.map(|(_, p)| p);
        }
    }
    err(field.unwrap_or_else(|| "syntax".to_string()), reason)
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

fn covers(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end
}

fn key_path(prefix: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key = if plain {
        key.to_string()
    } else {
        format!("{key:?}")
    };
    if prefix.is_empty() {
        key
    } else {
        format!("{prefix}.{key}")
    }
}

/// Finds the key or value with the tightest span around `span`. Tables opened by headers do not
/// have spans covering their bodies, so the whole tree is searched rather than descending only
/// into covering nodes.
fn locate(
    table: &DeTable<'_>,
    span: &Range<usize>,
    prefix: &str,
    best: &mut Option<(usize, String)>,
) {
    for (k, v) in table.iter() {
        // Error recovery invents empty keys; a path through one would point nowhere.
        if k.get_ref().is_empty() {
            continue;
        }
        let path = key_path(prefix, k.get_ref());
        consider(&k.span(), span, &path, best);
        locate_value(v, span, path, best);
    }
}

fn find_prev_key(
    table: &DeTable<'_>,
    name: &str,
    before: usize,
    prefix: &str,
    prev: &mut Option<(usize, String)>,
) {
    for (k, v) in table.iter() {
        if k.get_ref().is_empty() {
            continue;
        }
        let path = key_path(prefix, k.get_ref());
        let start = k.span().start;
        if k.get_ref() == name && start < before && prev.as_ref().is_none_or(|(s, _)| start > *s) {
            *prev = Some((start, path.clone()));
        }
        match v.get_ref() {
            DeValue::Table(t) => find_prev_key(t, name, before, &path, prev),
            DeValue::Array(a) => {
                for (i, e) in a.iter().enumerate() {
                    if let DeValue::Table(t) = e.get_ref() {
                        find_prev_key(t, name, before, &format!("{path}[{i}]"), prev);
                    }
                }
            }
            _ => {}
        }
    }
}

fn locate_value(
    v: &toml::Spanned<DeValue<'_>>,
    span: &Range<usize>,
    path: String,
    best: &mut Option<(usize, String)>,
) {
    consider(&v.span(), span, &path, best);
    match v.get_ref() {
        DeValue::Table(t) => locate(t, span, &path, best),
        DeValue::Array(a) => {
            for (i, e) in a.iter().enumerate() {
                locate_value(e, span, format!("{path}[{i}]"), best);
            }
        }
        _ => {}
    }
}

fn consider(
    node: &Range<usize>,
    span: &Range<usize>,
    path: &str,
    best: &mut Option<(usize, String)>,
) {
    if !covers(node, span) {
        return;
    }
    let width = node.end - node.start;
    // `<=` so that, at equal width, the deeper node (visited later) wins.
    if best.as_ref().is_none_or(|(w, _)| width <= *w) {
        *best = Some((width, path.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_chars() {
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("é\nx", 1), (1, 1));
        assert_eq!(line_col("", 10), (1, 1));
    }
}
