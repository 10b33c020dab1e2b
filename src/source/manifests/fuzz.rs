//! Fuzzing of the manifest decoder (`parse_document`): YAML multi-document
//! and JSON files into objects, a `List`'s items streamed one at a time and
//! checked against the same document decoded whole. Seeds are the manifests
//! in the repository (deploy/examples, tests/vm/packet-path) and
//! `tests/fuzz/corpus/manifests`;
//! the mutations are structure-aware (lines deleted, duplicated, swapped or
//! re-indented, scalars replaced by other types, huge numbers, anchors,
//! document markers) as well as byte-level. Files that are not UTF-8 never
//! reach `parse_document` (the reader rejects them), so bytes are read lossily.
//!
//! More cases: `PROPTEST_CASES=20000 cargo test --lib manifests::fuzz`.

#[path = "../../../netlink-ipvs/tests/fuzz/mutate.rs"]
#[allow(
    clippy::duplicate_mod,
    reason = "each fuzz module includes the shared engine from netlink-ipvs/tests"
)]
mod mutate;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use proptest::prelude::*;
use proptest::sample::{select, Index};

use self::mutate::{apply, load, mutated, mutation, Input, Mutation};
use super::*;

fn seeds() -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut seeds: Vec<Vec<u8>> = load(&root.join("tests/fuzz/corpus/manifests"))
        .into_iter()
        .map(|(_, bytes)| bytes)
        .collect();
    for dir in ["deploy/examples", "tests/vm/packet-path"] {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| is_manifest_name(path))
            .collect();
        paths.sort();
        seeds.extend(paths.iter().map(|path| std::fs::read(path).unwrap()));
    }
    seeds
}

/// What replaces a scalar: other types, extremes, YAML's special forms.
const SCALARS: &[&str] = &[
    "",
    "~",
    "null",
    "true",
    "0",
    "-1",
    "65536",
    "4294967296",
    "99999999999999999999999999999999",
    "-9223372036854775809",
    "1e999",
    "0x1F",
    "0o17",
    ".nan",
    "-.inf",
    "[]",
    "{}",
    "[1, [2, [3]]]",
    "{a: {b: {c: d}}}",
    "''",
    "\"\\u0000\"",
    "\"\\xff\"",
    "&a x",
    "*a",
    "*undefined",
    "!!binary aGVsbG8=",
    "!!str 80",
    "!custom x",
    "|\n  text",
    ">-\n  text",
    "? complex\n: key",
    "\u{feff}",
    "é🦀",
    "2001:db8::1",
    "10.0.0.1/33",
    "- item",
    "key: value",
];

/// Whole lines to insert.
const LINES: &[&str] = &[
    "---",
    "...",
    "--- !!map",
    "%YAML 1.2",
    "# comment",
    "- ",
    "-",
    "  - a",
    "items:",
    "items: null",
    "kind: List",
    "apiVersion: v1",
    "metadata: {name: x}",
    "spec:",
    "  ports:",
    "<<: *a",
    "\t",
    "? ",
    ": ",
    "a: &a [*a]",
];

#[derive(Debug, Clone)]
enum Edit {
    DeleteLine(Index),
    DuplicateLine(Index),
    SwapLines(Index, Index),
    Indent(Index, i8),
    ReplaceScalar(Index, &'static str),
    InsertLine(Index, &'static str),
    Bytes(Mutation),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        2 => any::<Index>().prop_map(Edit::DeleteLine),
        1 => any::<Index>().prop_map(Edit::DuplicateLine),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
        2 => (any::<Index>(), -4i8..=4).prop_map(|(at, by)| Edit::Indent(at, by)),
        4 => (any::<Index>(), select(SCALARS)).prop_map(|(at, s)| Edit::ReplaceScalar(at, s)),
        2 => (any::<Index>(), select(LINES)).prop_map(|(at, l)| Edit::InsertLine(at, l)),
        2 => mutation().prop_map(Edit::Bytes),
    ]
}

fn apply_edit(text: &mut Vec<u8>, edit: &Edit, seeds: &[Vec<u8>]) {
    if let Edit::Bytes(mutation) = edit {
        return apply(text, mutation, seeds);
    }
    let mut lines: Vec<Vec<u8>> = text.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
    let n = lines.len();
    match edit {
        Edit::DeleteLine(at) => {
            lines.remove(at.index(n));
        }
        Edit::DuplicateLine(at) => {
            let i = at.index(n);
            lines.insert(i, lines[i].clone());
        }
        Edit::SwapLines(a, b) => lines.swap(a.index(n), b.index(n)),
        Edit::Indent(at, by) => {
            let line = &mut lines[at.index(n)];
            if *by > 0 {
                line.splice(0..0, std::iter::repeat_n(b' ', *by as usize));
            } else {
                let spaces = line.iter().take_while(|&&b| b == b' ').count();
                line.drain(..spaces.min(by.unsigned_abs() as usize));
            }
        }
        Edit::ReplaceScalar(at, scalar) => {
            let line = &mut lines[at.index(n)];
            // After the key of `key: value`, else after a list's `- `.
            let start = line
                .windows(2)
                .position(|w| w == b": ")
                .map(|i| i + 2)
                .or_else(|| line.windows(2).position(|w| w == b"- ").map(|i| i + 2))
                .unwrap_or(line.len());
            line.splice(start.., scalar.bytes());
        }
        Edit::InsertLine(at, new) => lines.insert(at.index(n + 1), new.as_bytes().to_vec()),
        Edit::Bytes(_) => unreachable!("handled above"),
    }
    *text = lines.join(&b'\n');
}

fn mutated_manifests(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Input> {
    let seeds = Arc::new(seeds);
    (any::<Index>(), proptest::collection::vec(edit(), 0..=5)).prop_map(move |(seed, edits)| {
        let mut text = seed.get(&seeds[..]).clone();
        for edit in &edits {
            apply_edit(&mut text, edit, &seeds);
        }
        Input(text)
    })
}

/// Decodes `bytes` as a YAML file and as a JSON file; a document that
/// parses as a whole yields the same objects and errors when streamed.
fn check(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    for name in ["fuzz.yaml", "fuzz.json"] {
        let path = Path::new(name);
        for (index, (first_line, document)) in split_file(path, &text).into_iter().enumerate() {
            let mut objects = Vec::new();
            let errors = parse_document(path, index, first_line, document, &mut |object| {
                objects.push(object);
            });
            errors.iter().for_each(|error| drop(error.to_string()));
            if let Some(whole) = decode::parse_whole(path, index, document) {
                assert_eq!(
                    (objects, errors),
                    whole,
                    "{name} document {index}: {document}"
                );
            }
        }
    }
}

#[test]
fn the_corpus_decodes_without_panicking() {
    for seed in seeds() {
        check(&seed);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_manifests_never_panic(input in mutated_manifests(seeds())) {
        check(&input.0);
    }

    /// Byte-level mutations only.
    #[test]
    fn mutated_bytes_never_panic(input in mutated(seeds())) {
        check(&input.0);
    }
}
