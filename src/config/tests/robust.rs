//! Arbitrary, TOML-like and mutated texts never panic the parser; what it accepts round-trips.

use super::util::*;
use crate::config::*;

fn example_texts() -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples");
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    v.push(doc("", ""));
    v
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_text_never_panics(s in "\\PC{0,400}") {
        let _ = parse(&s);
    }

    #[test]
    fn tomlish_text_never_panics(s in "([\\[\\]a-z_.\"=,{}0-9/:\\- \n]{0,200})") {
        let _ = parse(&s);
    }

    /// Small edits to valid files reach deep into validation instead of stopping at syntax.
    #[test]
    fn mutated_examples_never_panic(
        which in 0usize..16,
        at in 0usize..4096,
        cut in 0usize..8,
        insert in "[0-9a-z\\[\\]\"=./:\\- \n]{0,4}",
    ) {
        let texts = example_texts();
        let t = &texts[which % texts.len()];
        let mut at = at % (t.len() + 1);
        while !t.is_char_boundary(at) { at -= 1; }
        let mut end = (at + cut).min(t.len());
        while !t.is_char_boundary(end) { end -= 1; }
        let mutated = format!("{}{}{}", &t[..at], insert, &t[end..]);
        if let Ok(c) = parse(&mutated) {
            proptest::prop_assert_eq!(parse(&c.to_toml()), Ok(c));
        }
    }
}
