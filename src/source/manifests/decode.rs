//! Decoding a manifest file into objects, one at a time.
//!
//! A `List` document's items are decoded one by one and handed over as each
//! is read, so that memory never scales with the document: a JSON `List` is
//! streamed through serde, and a YAML `List` whose `items` is a block
//! sequence is cut into its items, each parsed on its own. A bad item is
//! reported with its index, kind, namespace, name, field and value, and the
//! other items still load.

use std::fmt;
use std::path::Path;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::Metadata;
use serde::de::{DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::{ManifestError, Object};

pub(super) fn is_json(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
}

/// The objects and errors of a document parsed whole, as one value, or
/// `None` if it is not YAML or JSON: what the streamed read must match.
#[cfg(test)]
pub(super) fn parse_whole(
    path: &Path,
    index: usize,
    document: &str,
) -> Option<(Vec<Object>, Vec<ManifestError>)> {
    let value = if is_json(path) {
        serde_json::from_str(document).ok()?
    } else {
        serde_yaml_ng::from_str(document).ok()?
    };
    let mut objects = Vec::new();
    let mut push = |object| objects.push(object);
    let mut decoder = DocumentDecoder {
        path,
        document: index + 1,
        object: &mut push,
        errors: Vec::new(),
    };
    decoder.value(value, 0);
    let errors = decoder.errors;
    Some((objects, errors))
}

/// The documents of a file: (index of the document's first line, text).
/// A JSON file is one document.
pub(super) fn split_file<'a>(path: &Path, text: &'a str) -> Vec<(usize, &'a str)> {
    if is_json(path) {
        vec![(0, text)]
    } else {
        yaml_documents(text)
    }
}

/// Decodes document `index` (from 0) of a file, which starts on line
/// `first_line` of it, handing each object to `object` as soon as it is
/// decoded. Returns what could not be read: the whole document (it is not
/// YAML or JSON, or not an object), or single items of a list, whose
/// siblings are still handed over.
pub(super) fn parse_document(
    path: &Path,
    index: usize,
    first_line: usize,
    document: &str,
    object: &mut dyn FnMut(Object),
) -> Vec<ManifestError> {
    let mut decoder = DocumentDecoder {
        path,
        document: index + 1,
        object,
        errors: Vec::new(),
    };
    if is_json(path) {
        decoder.json(document);
    } else {
        decoder.yaml(first_line, document);
    }
    decoder.errors
}

/// Hands the objects of one document over and collects its errors.
struct DocumentDecoder<'a> {
    path: &'a Path,
    /// Counted from 1.
    document: usize,
    object: &'a mut dyn FnMut(Object),
    errors: Vec<ManifestError>,
}

impl DocumentDecoder<'_> {
    fn error(&mut self, message: String) {
        self.errors.push(ManifestError {
            path: self.path.to_path_buf(),
            document: Some(self.document),
            message,
        });
    }

    /// A JSON document. A `List` is read twice: once, without keeping
    /// anything, for its kind (serde_json writes keys sorted, so `items`
    /// comes before `kind`), then for its items, one at a time.
    fn json(&mut self, text: &str) {
        match serde_json::from_str::<TypeHead>(text) {
            Ok(head) if head.is_list() => {
                let mut reader = serde_json::Deserializer::from_str(text);
                let streamed = ListSeed { decoder: self }
                    .deserialize(&mut reader)
                    .and_then(|()| reader.end());
                if let Err(error) = streamed {
                    self.error(error.to_string());
                }
            }
            // Not a list, or not even an object: decoded whole, which also
            // words the error of a document that is not an object.
            _ => match serde_json::from_str::<serde_json::Value>(text) {
                Ok(value) => self.value(value, 0),
                Err(error) => self.error(error.to_string()),
            },
        }
    }

    /// A YAML document. A `List` whose `items` is a block sequence is cut
    /// into its items, each parsed on its own; should one not parse (an
    /// alias to an anchor in another item, or a syntax error), the whole
    /// document is parsed, which says where the error is in the file.
    fn yaml(&mut self, first_line: usize, text: &str) {
        // Items already handed over, skipped when the list is read whole.
        let mut read = 0;
        if let Some(list) = YamlList::of_list(text) {
            for item in list.items(text) {
                let Ok(value) = serde_yaml_ng::from_str::<serde_json::Value>(&item) else {
                    break;
                };
                self.item(read, value);
                read += 1;
            }
            if read == list.items.len() {
                return;
            }
        }
        match serde_yaml_ng::from_str::<serde_json::Value>(text) {
            Ok(value) => self.value(value, read),
            Err(_) => self.error(yaml_error_at(first_line, text)),
        }
    }

    /// A document decoded whole: none (empty document), one object, or a
    /// list's, less its first `skip` items.
    fn value(&mut self, value: serde_json::Value, skip: usize) {
        if value.is_null() {
            return;
        }
        let (api_version, kind) = match type_of(&value) {
            Ok(type_) => type_,
            Err(error) => return self.error(error.to_string()),
        };
        if kind == "List" || (kind.ends_with("List") && value.get("items").is_some()) {
            let serde_json::Value::Object(mut list) = value else {
                unreachable!("type_of accepts only objects");
            };
            match list.remove("items") {
                Some(serde_json::Value::Array(items)) => {
                    for (index, item) in items.into_iter().enumerate().skip(skip) {
                        self.item(index, item);
                    }
                }
                Some(serde_json::Value::Null) | None => {}
                Some(other) => self.error(
                    DecodeError::new(
                        "items",
                        format!("expected a sequence, found {}", json_type(&other)),
                    )
                    .to_string(),
                ),
            }
            return;
        }
        match decode_object(&api_version, &kind, value) {
            Ok(Some(object)) => (self.object)(object),
            Ok(None) => ignore_kind(self.path, self.document, None, &api_version, &kind),
            Err(error) => self.error(error.to_string()),
        }
    }

    /// Item `index` of a list. A bad item is reported with what names it:
    /// its index, and its kind, namespace and name where it has them.
    fn item(&mut self, index: usize, item: serde_json::Value) {
        // Only a few short strings: taken before decoding consumes the item.
        let label = describe_item(&item);
        let decoded = type_of(&item).and_then(|(api_version, kind)| {
            let object = decode_object(&api_version, &kind, item)?;
            Ok((api_version, kind, object))
        });
        match decoded {
            Ok((_, _, Some(object))) => (self.object)(object),
            Ok((api_version, kind, None)) => {
                ignore_kind(self.path, self.document, Some(index), &api_version, &kind);
            }
            Err(error) => self.error(format!("items[{index}]{label}: {error}")),
        }
    }
}

/// What names a list item in an error: ` (Service web/name)`, or nothing
/// when it has no kind or name.
fn describe_item(item: &serde_json::Value) -> String {
    let text = |value: Option<&serde_json::Value>| {
        value
            .and_then(serde_json::Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let kind = text(item.get("kind"));
    let metadata = item.get("metadata");
    let name = text(metadata.and_then(|m| m.get("name")));
    let namespace = text(metadata.and_then(|m| m.get("namespace")));
    match (kind, name) {
        (Some(kind), Some(name)) if kind == "Node" => format!(" ({kind} {name})"),
        (Some(kind), Some(name)) => format!(
            " ({kind} {}/{name})",
            namespace.as_deref().unwrap_or("default")
        ),
        (Some(kind), None) => format!(" ({kind})"),
        (None, Some(name)) => format!(" ({name})"),
        (None, None) => String::new(),
    }
}

/// The apiVersion and kind of a document, read without keeping the rest.
#[derive(Deserialize)]
struct TypeHead {
    #[serde(rename = "apiVersion")]
    api_version: Option<serde_json::Value>,
    kind: Option<serde_json::Value>,
    /// Whether it has `items`, whatever their value.
    #[serde(default, deserialize_with = "present")]
    items: bool,
}

fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    IgnoredAny::deserialize(deserializer).map(|_| true)
}

impl TypeHead {
    /// Whether the document is a list whose items may be streamed: a
    /// `List`, or a `…List` kind (ServiceList), with a valid apiVersion.
    /// A `…List` without `items` is then read as an empty list rather than
    /// an object of an unknown kind: both yield no object.
    fn is_list(&self) -> bool {
        let string = |value: &Option<serde_json::Value>| match value {
            Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s.clone()),
            _ => None,
        };
        string(&self.api_version).is_some()
            && string(&self.kind).is_some_and(|kind| kind.ends_with("List"))
    }
}

/// A JSON `List` document whose items are handed over one at a time.
struct ListSeed<'d, 'a> {
    decoder: &'d mut DocumentDecoder<'a>,
}

impl<'de> DeserializeSeed<'de> for ListSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ListSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a List object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == "items" {
                map.next_value_seed(ItemsSeed {
                    decoder: &mut *self.decoder,
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// The `items` of a JSON `List`: each decoded and handed over in turn.
struct ItemsSeed<'d, 'a> {
    decoder: &'d mut DocumentDecoder<'a>,
}

impl<'de> DeserializeSeed<'de> for ItemsSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ItemsSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("`items` to be a sequence")
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<(), A::Error> {
        let mut index = 0;
        while let Some(item) = items.next_element::<serde_json::Value>()? {
            self.decoder.item(index, item);
            index += 1;
        }
        Ok(())
    }
}

/// A YAML `List` cut at its items: the text outside `items` (apiVersion,
/// kind, metadata), and where each item starts and ends.
#[derive(Debug, PartialEq)]
struct YamlList {
    head: String,
    /// Byte ranges of the items, each starting at its `-` line.
    items: Vec<std::ops::Range<usize>>,
    /// The column of the items' `-`.
    indent: usize,
}

impl YamlList {
    /// The items of a `List` document, if they can be cut apart.
    fn of_list(text: &str) -> Option<YamlList> {
        let list = YamlList::split(text)?;
        let head = serde_yaml_ng::from_str::<TypeHead>(&list.head).ok()?;
        // An `items` left in the head is a second one, which YAML readers
        // resolve differently: read whole.
        (head.is_list() && !head.items).then_some(list)
    }

    /// Finds a top-level `items:` whose value is a block sequence on the
    /// following lines; `None` for any other layout (the document is then
    /// parsed whole).
    fn split(text: &str) -> Option<YamlList> {
        let mut head = String::new();
        let mut items: Vec<std::ops::Range<usize>> = Vec::new();
        let mut indent = None;
        let mut in_items = false;
        let mut found = false;
        let mut offset = 0;
        for line in text.split_inclusive('\n') {
            let start = offset;
            offset += line.len();
            let content = line.trim_end_matches(['\n', '\r']);
            let trimmed = content.trim_start_matches(' ');
            let column = content.len() - trimmed.len();
            if in_items {
                let blank = trimmed.is_empty() || trimmed.starts_with('#');
                let entry = is_sequence_entry(trimmed);
                if blank {
                    // Comments and blank lines go with the item before them.
                    if let Some(last) = items.last_mut() {
                        last.end = offset;
                    }
                    continue;
                }
                let indent = *indent.get_or_insert(column);
                if column == indent && entry {
                    items.push(start..offset);
                    continue;
                }
                if column > indent {
                    items.last_mut()?.end = offset;
                    continue;
                }
                if column > 0 || entry {
                    // Neither an item nor the next top-level key.
                    return None;
                }
                in_items = false;
            }
            if column == 0 && is_items_key(trimmed) {
                if found {
                    return None;
                }
                found = true;
                in_items = true;
                continue;
            }
            head.push_str(line);
        }
        found.then(|| YamlList {
            head,
            items,
            indent: indent.unwrap_or(0),
        })
    }

    /// The text of each item, its `-` turned into a space so that it parses
    /// as the node the item holds.
    fn items<'t>(&'t self, text: &'t str) -> impl Iterator<Item = String> + 't {
        self.items.iter().map(|range| {
            let mut item = text[range.clone()].to_owned();
            item.replace_range(self.indent..=self.indent, " ");
            item
        })
    }
}

/// `items:` with nothing after it but a comment: a block value follows.
fn is_items_key(line: &str) -> bool {
    line.strip_prefix("items:").is_some_and(|rest| {
        let rest = rest.trim_start_matches([' ', '\t', '\r', '\n']);
        rest.is_empty() || rest.starts_with('#')
    })
}

/// A line that opens an entry of a block sequence: `-` then a space or
/// the end of the line.
fn is_sequence_entry(trimmed: &str) -> bool {
    trimmed
        .strip_prefix('-')
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
}

/// A YAML error whose line numbers count from the start of the file, not of
/// the document: the document is parsed again behind as many empty lines as
/// precede it (only on error, so the copy costs nothing in the common case).
fn yaml_error_at(first_line: usize, document: &str) -> String {
    let mut padded = "\n".repeat(first_line);
    padded.push_str(document);
    match serde_yaml_ng::from_str::<serde_json::Value>(&padded) {
        Err(error) => error.to_string(),
        Ok(_) => "invalid YAML".to_owned(),
    }
}

/// Splits a YAML stream at its `---` document markers into (index of the
/// document's first line, text). Comments and directives before the first
/// marker belong to the first document instead of forming an empty one.
pub(super) fn yaml_documents(text: &str) -> Vec<(usize, &str)> {
    let mut documents = Vec::new();
    let (mut start, mut start_line) = (0, 0);
    let mut offset = 0;
    for (line_index, line) in text.split_inclusive('\n').enumerate() {
        if is_document_marker(line) && offset > 0 {
            let previous = &text[start..offset];
            if start > 0 || has_content(previous) {
                documents.push((start_line, previous));
                (start, start_line) = (offset, line_index);
            }
        }
        offset += line.len();
    }
    let last = &text[start..];
    if start > 0 || has_content(last) {
        documents.push((start_line, last));
    }
    documents
}

fn is_document_marker(line: &str) -> bool {
    line.strip_prefix("---")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
}

/// Whether YAML text holds more than blank lines, comments and directives.
fn has_content(text: &str) -> bool {
    text.lines().any(|line| {
        let line = line.trim();
        !line.is_empty() && !line.starts_with('#') && !line.starts_with('%')
    })
}

/// Why an object could not be decoded: the field and what is wrong with it.
#[derive(Debug)]
struct DecodeError {
    /// Dotted path of the field, empty for the object itself.
    field: String,
    message: String,
}

impl DecodeError {
    fn new(field: &str, message: impl Into<String>) -> Self {
        DecodeError {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

fn ignore_kind(path: &Path, document: usize, item: Option<usize>, api_version: &str, kind: &str) {
    tracing::warn!(
        file = %path.display(),
        document,
        item,
        api_version,
        kind,
        "manifest of a kind the proxy does not read; ignored"
    );
}

/// The apiVersion and kind of an object, both required.
fn type_of(value: &serde_json::Value) -> Result<(String, String), DecodeError> {
    let serde_json::Value::Object(object) = value else {
        return Err(DecodeError::new(
            "",
            format!(
                "expected an object with apiVersion and kind, found {}",
                json_type(value)
            ),
        ));
    };
    let field = |name: &str| match object.get(name) {
        Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        None | Some(serde_json::Value::Null) => Err(DecodeError::new(name, "missing")),
        Some(serde_json::Value::String(_)) => Err(DecodeError::new(name, "empty")),
        Some(other) => Err(DecodeError::new(
            name,
            format!("expected a string, found {}", json_type(other)),
        )),
    };
    Ok((field("apiVersion")?, field("kind")?))
}

fn json_type(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a sequence",
        serde_json::Value::Object(_) => "a mapping",
    }
}

/// One object of a kind the proxy reads, or `None` for any other kind.
fn decode_object(
    api_version: &str,
    kind: &str,
    value: serde_json::Value,
) -> Result<Option<Object>, DecodeError> {
    let object = match (api_version, kind) {
        ("v1", "Service") => Object::Service(Box::new(decode_namespaced(value)?)),
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            Object::EndpointSlice(Box::new(decode_namespaced(value)?))
        }
        ("v1", "Endpoints") => Object::Endpoints(Box::new(decode_namespaced(value)?)),
        ("v1", "Node") => Object::Node(Box::new(decode(value)?)),
        _ => return Ok(None),
    };
    Ok(Some(object))
}

/// A namespaced object; without a namespace it lands in `default`, as with
/// `kubectl apply`.
fn decode_namespaced<K>(value: serde_json::Value) -> Result<K, DecodeError>
where
    K: DeserializeOwned + Metadata<Ty = ObjectMeta>,
{
    let mut object: K = decode(value)?;
    let namespace = &mut object.metadata_mut().namespace;
    if namespace.as_deref().is_none_or(str::is_empty) {
        *namespace = Some("default".to_owned());
    }
    Ok(object)
}

fn decode<K>(value: serde_json::Value) -> Result<K, DecodeError>
where
    K: DeserializeOwned + Metadata<Ty = ObjectMeta>,
{
    let object: K = serde_path_to_error::deserialize(value).map_err(|error| {
        let field = error.path().to_string();
        let field = if field == "." { String::new() } else { field };
        DecodeError {
            field,
            message: error.into_inner().to_string(),
        }
    })?;
    if object.metadata().name.as_deref().is_none_or(str::is_empty) {
        return Err(DecodeError::new("metadata.name", "missing"));
    }
    Ok(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The objects of a YAML document, as `Debug` text: its items one at a
    /// time when `split`, else decoded whole.
    fn objects(text: &str, split: bool) -> (Vec<String>, Vec<String>) {
        let mut objects = Vec::new();
        let mut push = |object: Object| objects.push(format!("{object:?}"));
        let mut decoder = DocumentDecoder {
            path: Path::new("x.yaml"),
            document: 1,
            object: &mut push,
            errors: Vec::new(),
        };
        if split {
            decoder.yaml(0, text);
        } else {
            decoder.value(serde_yaml_ng::from_str(text).unwrap(), 0);
        }
        let errors = decoder.errors.iter().map(ToString::to_string).collect();
        (objects, errors)
    }

    #[test]
    fn a_yaml_list_cut_into_items_reads_as_the_whole_list() {
        let service = |name: &str| {
            format!(
                "apiVersion: v1\n  kind: Service\n  metadata:\n    name: {name}\n  spec:\n    \
                 ports:\n    - port: 80\n    - port: 81\n"
            )
        };
        struct Case {
            name: &'static str,
            text: String,
            /// The number of items cut; `None` when the list is read whole.
            items: Option<usize>,
        }
        let cases = [
            Case {
                name: "items at the column of `items:`",
                text: format!(
                    "apiVersion: v1\nkind: List\nitems:\n- {}- {}",
                    service("a"),
                    service("b")
                ),
                items: Some(2),
            },
            Case {
                name: "items indented, comments and blank lines between",
                text: format!(
                    "# list\napiVersion: v1\nitems: # the services\n\n  # first\n  - {}\n  - {}\
                     kind: List\nmetadata: {{}}\n",
                    service("a").replace("\n  ", "\n    "),
                    service("b").replace("\n  ", "\n    ")
                ),
                items: Some(2),
            },
            Case {
                name: "a block scalar inside an item",
                text: "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Node\n  \
                       metadata:\n    name: c\n    annotations:\n      note: |\n        \
                       - not an item\n\n        x: y\n"
                    .to_owned(),
                items: Some(1),
            },
            Case {
                name: "an item on several lines after its `-`",
                text: format!("apiVersion: v1\nkind: List\nitems:\n-\n  {}", service("a")),
                items: Some(1),
            },
            Case {
                name: "a second `items` after the block: read whole",
                text: "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Node, \
                       metadata: {name: n}}\nitems: [{apiVersion: v1, kind: Node, \
                       metadata: {name: m}}]\n"
                    .to_owned(),
                items: None,
            },
            Case {
                name: "flow items",
                text: "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Node, \
                       metadata: {name: n}}\n"
                    .to_owned(),
                items: Some(1),
            },
            Case {
                name: "an anchor in one item used in another: read whole",
                text: "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Node\n  \
                       metadata: &m {name: n}\n- apiVersion: v1\n  kind: Node\n  metadata: *m\n"
                    .to_owned(),
                items: None,
            },
            Case {
                name: "items as a flow sequence: read whole",
                text: "apiVersion: v1\nkind: List\nitems: [{apiVersion: v1, kind: Node, \
                       metadata: {name: n}}]\n"
                    .to_owned(),
                items: None,
            },
        ];
        for case in cases {
            let split = YamlList::of_list(&case.text);
            let cut = split.as_ref().map(|list| list.items.len());
            let parsed = split.is_some_and(|list| {
                list.items(&case.text)
                    .all(|item| serde_yaml_ng::from_str::<serde_json::Value>(&item).is_ok())
            });
            assert_eq!(parsed.then_some(cut).flatten(), case.items, "{}", case.name);
            let whole = objects(&case.text, false);
            assert!(!whole.0.is_empty(), "{}", case.name);
            assert_eq!(objects(&case.text, true), whole, "{}", case.name);
        }
    }

    #[test]
    fn a_bad_item_names_the_item_and_the_others_load() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Node\n  \
                    metadata: {name: n}\n- apiVersion: v1\n  kind: Service\n  metadata: \
                    {name: s, namespace: web}\n  spec: {ports: [{port: x}]}\n- {kind: Node}\n\
                    - apiVersion: v1\n  kind: Node\n  metadata: {name: m}\n";
        let (objects, errors) = objects(text, true);
        assert_eq!(objects.len(), 2, "{objects:?}");
        assert_eq!(
            errors,
            [
                "x.yaml: document 1: items[1] (Service web/s): spec.ports[0].port: \
                 invalid type: string \"x\", expected i32",
                "x.yaml: document 1: items[2] (Node): apiVersion: missing",
            ]
        );
    }
}
