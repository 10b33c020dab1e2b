//! The mutation engine of the fuzz tests: proptest picks a seed from a
//! corpus and a few mutations to apply to it, generic (bit flips,
//! interesting bytes, truncation, insertion, removal, duplication, splicing
//! with another seed) and netlink-aware (a wrong nlmsg_len or nla_len, a
//! toggled NLA_F_NESTED, a rewritten nlmsg_seq). Shrinking drops mutations
//! one by one, so a failure is reported as the seed plus the fewest
//! mutations that still break the parser.
//!
//! The file is shared: netlink-ipvs's `tests/fuzz` includes it as a module,
//! the proxy's fuzz modules with `#[path]`.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use proptest::sample::{select, Index};

/// One fuzz input. Its Debug form is the hex of a corpus file, so that the
/// minimized input of a failing case pastes into the corpus as it is.
#[derive(Clone, PartialEq, Eq)]
pub struct Input(pub Vec<u8>);

impl fmt::Debug for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Input(\"")?;
        for byte in &self.0 {
            write!(f, "{byte:02x}")?;
        }
        f.write_str("\")")
    }
}

/// The inputs of a corpus directory, by file name, sorted: `*.hex` files
/// are hex digits (whitespace ignored, `#` starts a comment to the end of
/// the line); any other file is taken byte for byte.
pub fn load(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .filter(|path| path.is_file())
        .collect();
    entries.sort();
    let inputs: Vec<_> = entries
        .into_iter()
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let bytes = std::fs::read(&path).expect("corpus file");
            let bytes = if name.ends_with(".hex") {
                unhex(&String::from_utf8(bytes).expect("hex corpus file is text"))
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            } else {
                bytes
            };
            (name, bytes)
        })
        .collect();
    assert!(!inputs.is_empty(), "corpus {} is empty", dir.display());
    inputs
}

fn unhex(text: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = text
        .lines()
        .flat_map(|line| line.split('#').next().unwrap_or_default().bytes())
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if !digits.len().is_multiple_of(2) {
        return Err(format!("odd number of hex digits ({})", digits.len()));
    }
    digits
        .chunks(2)
        .map(|pair| {
            let pair = std::str::from_utf8(pair).map_err(|e| e.to_string())?;
            u8::from_str_radix(pair, 16).map_err(|e| format!("{pair:?}: {e}"))
        })
        .collect()
}

/// Inputs made from `seeds`: one seed, then up to six mutations.
pub fn mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Input> {
    assert!(!seeds.is_empty(), "no seeds");
    let seeds = Arc::new(seeds);
    (any::<Index>(), proptest::collection::vec(mutation(), 0..=6)).prop_map(
        move |(seed, mutations)| {
            let mut bytes = seed.get(&seeds[..]).clone();
            for mutation in &mutations {
                apply(&mut bytes, mutation, &seeds);
            }
            Input(bytes)
        },
    )
}

/// A new nlmsg_len or nla_len.
#[derive(Debug, Clone)]
pub enum Length {
    /// Exactly this value (truncated to 16 bits for an nla_len).
    Set(u32),
    /// The current value plus this.
    Delta(i32),
}

/// One change to an input.
#[derive(Debug, Clone)]
pub enum Mutation {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    /// Sets an aligned 32-bit word (an error code, a length, a u32 value).
    SetWord(Index, u32),
    Truncate(Index),
    Insert(Index, Vec<u8>),
    Remove(Index, usize),
    /// Copies `len` bytes from the first position to the second.
    Duplicate(Index, usize, Index),
    /// Inserts `len` bytes of another seed.
    Splice(Index, Index, usize, Index),
    /// Rewrites the nlmsg_len of one of the netlink messages.
    MessageLength(Index, Length),
    /// Rewrites the nla_len of one of the attributes found by walking them.
    AttributeLength(Index, Length),
    /// Toggles NLA_F_NESTED on one of the attributes.
    NestedFlag(Index),
    /// Rewrites the nlmsg_seq of one of the messages to a small number, the
    /// sequence numbers the connection fuzz tests have in flight.
    Sequence(Index, u32),
}

const INTERESTING_BYTES: [u8; 8] = [0, 1, 0x7f, 0x80, 0xfe, 0xff, 0x10, 0x04];
const INTERESTING_WORDS: [u32; 6] = [0, 1, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff, 0xffff_ffef];
const INTERESTING_LENGTHS: [u32; 14] = [
    0,
    1,
    3,
    4,
    5,
    15,
    16,
    17,
    19,
    20,
    0x7fff,
    0xffff,
    0x1_0000,
    u32::MAX,
];

pub fn mutation() -> impl Strategy<Value = Mutation> {
    let length = prop_oneof![
        select(&INTERESTING_LENGTHS[..]).prop_map(Length::Set),
        (-8i32..=8).prop_map(Length::Delta),
    ];
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit(at, bit)),
        3 => (any::<Index>(), prop_oneof![select(&INTERESTING_BYTES[..]), any::<u8>()])
            .prop_map(|(at, value)| Mutation::SetByte(at, value)),
        2 => (any::<Index>(), select(&INTERESTING_WORDS[..]))
            .prop_map(|(at, value)| Mutation::SetWord(at, value)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
        1 => (any::<Index>(), 1usize..32).prop_map(|(at, len)| Mutation::Remove(at, len)),
        1 => (any::<Index>(), 1usize..64, any::<Index>())
            .prop_map(|(from, len, to)| Mutation::Duplicate(from, len, to)),
        1 => (any::<Index>(), any::<Index>(), 1usize..256, any::<Index>())
            .prop_map(|(seed, from, len, to)| Mutation::Splice(seed, from, len, to)),
        3 => (any::<Index>(), length.clone()).prop_map(|(at, l)| Mutation::MessageLength(at, l)),
        4 => (any::<Index>(), length).prop_map(|(at, l)| Mutation::AttributeLength(at, l)),
        2 => any::<Index>().prop_map(Mutation::NestedFlag),
        1 => (any::<Index>(), 0u32..6).prop_map(|(at, seq)| Mutation::Sequence(at, seq)),
    ]
}

pub fn apply(bytes: &mut Vec<u8>, mutation: &Mutation, seeds: &[Vec<u8>]) {
    // An index into a buffer that may be empty: None when it is.
    let position = |at: &Index, len: usize| (len > 0).then(|| at.index(len));
    match mutation {
        Mutation::FlipBit(at, bit) => {
            if let Some(i) = position(at, bytes.len()) {
                bytes[i] ^= 1 << bit;
            }
        }
        Mutation::SetByte(at, value) => {
            if let Some(i) = position(at, bytes.len()) {
                bytes[i] = *value;
            }
        }
        Mutation::SetWord(at, value) => {
            if let Some(i) = position(at, bytes.len() / 4) {
                bytes[4 * i..4 * i + 4].copy_from_slice(&value.to_ne_bytes());
            }
        }
        Mutation::Truncate(at) => bytes.truncate(at.index(bytes.len() + 1)),
        Mutation::Insert(at, new) => {
            let i = at.index(bytes.len() + 1);
            bytes.splice(i..i, new.iter().copied());
        }
        Mutation::Remove(at, len) => {
            if let Some(i) = position(at, bytes.len()) {
                let end = (i + len).min(bytes.len());
                bytes.drain(i..end);
            }
        }
        Mutation::Duplicate(from, len, to) => {
            if let Some(i) = position(from, bytes.len()) {
                let copy = bytes[i..(i + len).min(bytes.len())].to_vec();
                let j = to.index(bytes.len() + 1);
                bytes.splice(j..j, copy);
            }
        }
        Mutation::Splice(seed, from, len, to) => {
            let other = seed.get(seeds);
            if let Some(i) = position(from, other.len()) {
                let j = to.index(bytes.len() + 1);
                bytes.splice(j..j, other[i..(i + len).min(other.len())].iter().copied());
            }
        }
        Mutation::MessageLength(at, length) => {
            let headers = message_headers(bytes);
            if let Some(i) = position(at, headers.len()) {
                let field = headers[i];
                let old = u32::from_ne_bytes(bytes[field..field + 4].try_into().unwrap());
                let new = match length {
                    Length::Set(value) => *value,
                    Length::Delta(delta) => old.wrapping_add_signed(*delta),
                };
                bytes[field..field + 4].copy_from_slice(&new.to_ne_bytes());
            }
        }
        Mutation::AttributeLength(at, length) => {
            let headers = attribute_headers(bytes);
            if let Some(i) = position(at, headers.len()) {
                let field = headers[i];
                let old = u16::from_ne_bytes([bytes[field], bytes[field + 1]]);
                let new = match length {
                    Length::Set(value) => *value as u16,
                    Length::Delta(delta) => old.wrapping_add_signed(*delta as i16),
                };
                bytes[field..field + 2].copy_from_slice(&new.to_ne_bytes());
            }
        }
        Mutation::NestedFlag(at) => {
            let headers = attribute_headers(bytes);
            if let Some(i) = position(at, headers.len()) {
                // NLA_F_NESTED is bit 15 of nla_type, bytes 2..4 of the header.
                let kind = headers[i] + 2;
                let flagged = u16::from_ne_bytes([bytes[kind], bytes[kind + 1]]) ^ 0x8000;
                bytes[kind..kind + 2].copy_from_slice(&flagged.to_ne_bytes());
            }
        }
        Mutation::Sequence(at, seq) => {
            let headers = message_headers(bytes);
            if let Some(i) = position(at, headers.len()) {
                let field = headers[i] + 8;
                bytes[field..field + 4].copy_from_slice(&seq.to_ne_bytes());
            }
        }
    }
}

const NLMSG_HDRLEN: usize = 16;
const NLA_HDRLEN: usize = 4;

fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// The offsets of the netlink message headers of `bytes`, read as a
/// datagram: each message starts where the previous one's aligned
/// nlmsg_len ends.
fn message_headers(bytes: &[u8]) -> Vec<usize> {
    let mut headers = Vec::new();
    let mut at = 0;
    while at + NLMSG_HDRLEN <= bytes.len() {
        headers.push(at);
        let len = u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        at += align(len).max(NLMSG_HDRLEN);
    }
    headers
}

/// The offsets of the attribute headers of `bytes`, found without knowing
/// the family: in each netlink message, after each plausible fixed header
/// (none, genlmsghdr or nfgenmsg, ifaddrmsg), an attribute walk that ends
/// exactly at the end of the message counts, and so does one inside an
/// attribute's value. Bytes that are attributes only (no netlink header)
/// are walked from their start.
fn attribute_headers(bytes: &[u8]) -> Vec<usize> {
    let mut headers = Vec::new();
    walk(bytes, 0, bytes.len(), &mut headers, 0);
    for at in message_headers(bytes) {
        let len = u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let end = (at + len).min(bytes.len());
        for fixed in [0, 4, 8] {
            walk(bytes, at + NLMSG_HDRLEN + fixed, end, &mut headers, 0);
        }
    }
    headers.sort_unstable();
    headers.dedup();
    headers
}

/// Adds the attributes of `bytes[start..end]` to `headers` if they tile it
/// exactly, and recurses into their values.
fn walk(bytes: &[u8], start: usize, end: usize, headers: &mut Vec<usize>, depth: usize) {
    if depth > 8 || start >= end {
        return;
    }
    let mut found = Vec::new();
    let mut at = start;
    while at + NLA_HDRLEN <= end {
        let len = usize::from(u16::from_ne_bytes([bytes[at], bytes[at + 1]]));
        if len < NLA_HDRLEN || at + len > end {
            return;
        }
        found.push((at, len));
        at += align(len);
    }
    if at < end && found.is_empty() {
        return;
    }
    for &(at, len) in &found {
        headers.push(at);
        walk(bytes, at + NLA_HDRLEN, at + len, headers, depth + 1);
    }
}
