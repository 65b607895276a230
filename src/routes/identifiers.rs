//! Identifiers: every request parameter that names content, a space or a user, declared
//! once for the whole profile (`[identifiers]`), and the JSON pointers of request bodies a
//! rule names (`json_identifiers`). The wiki acts on each one it finds, whichever rule
//! matched the request, so a guest's request is judged on each one present: in canonical
//! form, resolved to its space, and allowed there for what the request does with it.

use std::collections::HashMap;

use regex::Regex;

use super::Action;

/// What an identifier names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A content id (page, blog post, comment, attachment, draft): resolved to its space.
    Content,
    /// A space key.
    Space,
    /// A user name.
    User,
}

/// The permission an identifier's target needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// What the route itself does (its action).
    Route,
    /// A fixed permission: a source that is only read needs `view`, a destination `edit`.
    Action(Action),
}

/// One declared identifier.
#[derive(Debug, Clone)]
pub struct Identifier {
    /// As declared (the wiki's spelling).
    pub name: String,
    pub kind: Kind,
    pub needs: Needs,
    /// Index into the profile's lookups; `None`: `[content_lookup]`.
    pub lookup: Option<usize>,
}

/// The profile's identifiers and what counts as their canonical form.
#[derive(Debug, Clone)]
pub struct Identifiers {
    declared: Vec<Identifier>,
    /// Declared names (lower-cased when `case_insensitive_names`) → index.
    by_name: HashMap<String, usize>,
    /// The wiki reads parameter names case-insensitively (Struts 2's `HttpParameters` keeps
    /// them in a `TreeMap` ordered by `CASE_INSENSITIVE_ORDER`).
    pub case_insensitive_names: bool,
    /// A space key in canonical form.
    pub space_key: Regex,
}

impl Default for Identifiers {
    fn default() -> Identifiers {
        Identifiers {
            declared: Vec::new(),
            by_name: HashMap::new(),
            case_insensitive_names: false,
            space_key: default_space_key(),
        }
    }
}

/// Confluence's space keys (`Space.isValidSpaceKey`): ASCII letters and digits, or `~` and
/// a user name for a personal space. Nothing another decoding could read differently.
pub fn default_space_key() -> Regex {
    Regex::new(r#"^(?:[A-Za-z0-9]+|~[^\s%+"'\\<>/?#&;=]+)$"#)
        .unwrap_or_else(|_| unreachable!("constant regex"))
}

impl Identifiers {
    pub fn new(
        declared: Vec<Identifier>,
        case_insensitive_names: bool,
        space_key: Regex,
    ) -> Identifiers {
        let by_name = declared
            .iter()
            .enumerate()
            .map(|(i, d)| (fold(&d.name, case_insensitive_names), i))
            .collect();
        Identifiers {
            declared,
            by_name,
            case_insensitive_names,
            space_key,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.declared.is_empty()
    }

    /// The identifier a parameter of this name is, as the wiki reads the name.
    pub fn find(&self, name: &str) -> Option<&Identifier> {
        let index = if self.case_insensitive_names && name.bytes().any(|b| b.is_ascii_uppercase()) {
            self.by_name.get(&name.to_ascii_lowercase())
        } else {
            self.by_name.get(name)
        };
        index.map(|i| &self.declared[*i])
    }

    /// Whether `value` is in the canonical form of `kind`: what every reader of it — the
    /// gateway, the servlet container, an interceptor that decodes once more, Java's
    /// `Long.parseLong` (which takes a `+` and any Unicode digit) — reads alike.
    pub fn is_canonical(&self, kind: Kind, value: &str) -> bool {
        match kind {
            Kind::Content => is_canonical_id(value),
            Kind::Space => self.space_key.is_match(value),
            Kind::User => crate::files::is_printable_name(value) && !value.contains(['%', '+']),
        }
    }
}

/// ASCII digits, no sign, no leading zero, within a signed 64-bit id.
pub fn is_canonical_id(value: &str) -> bool {
    let digits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
    digits && (value == "0" || !value.starts_with('0')) && value.parse::<i64>().is_ok()
}

fn fold(name: &str, case_insensitive: bool) -> String {
    if case_insensitive {
        name.to_ascii_lowercase()
    } else {
        name.to_string()
    }
}

/// A JSON pointer into a request body naming an identifier; `*` stands for every element
/// of an array (`/ancestors/*/id`).
#[derive(Debug, Clone)]
pub struct JsonIdentifier {
    pub pointer: Vec<String>,
    pub kind: Kind,
    pub needs: Needs,
    /// Which lookup resolves a content id (`content:view@revision`); `None`:
    /// `[content_lookup]`.
    pub lookup: Option<usize>,
}

impl JsonIdentifier {
    /// Every value at the pointer in `body` (none when absent).
    pub fn values<'b>(&self, body: &'b serde_json::Value) -> Vec<&'b serde_json::Value> {
        let mut at = vec![body];
        for segment in &self.pointer {
            let mut next = Vec::new();
            for v in at {
                match (segment.as_str(), v) {
                    ("*", serde_json::Value::Array(items)) => next.extend(items.iter()),
                    (key, serde_json::Value::Object(map)) => next.extend(map.get(key)),
                    (index, serde_json::Value::Array(items)) => {
                        next.extend(index.parse::<usize>().ok().and_then(|i| items.get(i)))
                    }
                    _ => {}
                }
            }
            at = next;
        }
        at
    }
}

/// Identifiers with only Confluence's `pageId`, read case-insensitively: the fixture the
/// unit tests of the stages that scan for identifiers share.
#[cfg(test)]
pub(crate) fn page_id_only() -> Identifiers {
    Identifiers::new(
        vec![Identifier {
            name: "pageId".into(),
            kind: Kind::Content,
            needs: Needs::Route,
            lookup: None,
        }],
        true,
        default_space_key(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_ids_are_canonical() {
        for ok in ["0", "1", "2001", "9223372036854775807"] {
            assert!(is_canonical_id(ok), "{ok}");
        }
        for bad in [
            "",
            "+2001",
            "-1",
            "02001",
            " 2001",
            "2001 ",
            "２００１",
            "٢٠٠١",
            "2001L",
            "1e3",
            "9223372036854775808",
            "%32001",
        ] {
            assert!(!is_canonical_id(bad), "{bad}");
        }
    }

    #[test]
    fn space_keys_as_confluence_writes_them() {
        let re = default_space_key();
        for ok in ["ENG", "eng", "A1", "~gary", "~gary.smith@example.com"] {
            assert!(re.is_match(ok), "{ok}");
        }
        for bad in ["", "EN G", "ENG%20", "EN+G", "~", "ENG/HR", "E\"NG", "ÉNG"] {
            assert!(!re.is_match(bad), "{bad}");
        }
    }

    #[test]
    fn names_are_found_as_the_wiki_reads_them() {
        let ids = page_id_only();
        for name in ["pageId", "PAGEID", "pageid"] {
            assert!(ids.find(name).is_some(), "{name}");
        }
        assert!(ids.find("pageIds").is_none());
    }

    #[test]
    fn json_pointers_reach_every_array_element() {
        let j = JsonIdentifier {
            pointer: vec!["ancestors".into(), "*".into(), "id".into()],
            kind: Kind::Content,
            needs: Needs::Action(Action::Edit),
            lookup: None,
        };
        let body = serde_json::json!({"ancestors": [{"id": "1"}, {"id": 2}, {}]});
        assert_eq!(j.values(&body).len(), 2);
        assert!(j.values(&serde_json::json!({"x": 1})).is_empty());
    }
}
