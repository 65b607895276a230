//! Where a value names a space or a user: JSON pointers into listing items, attributes of
//! user links, and the patterns that cut a key out of a longer value. Compiled with the
//! profile; the rewrite stage and the content lookups read them.

use regex::Regex;

/// A space key inside a longer value: the `space` capture (or the whole match) of an
/// optional pattern, upper-cased (space keys compare case-insensitively). MediaWiki names
/// pages `ENG:Home`, where the key is a prefix; Confluence answers the bare key.
#[derive(Debug, Clone, Default)]
pub struct SpaceName {
    pub pattern: Option<Regex>,
}

impl SpaceName {
    /// The key `value` names; `None` when the pattern does not match or the key is empty.
    pub fn key_in(&self, value: &str) -> Option<String> {
        let key = match &self.pattern {
            None => value,
            Some(re) => {
                let caps = re.captures(value)?;
                caps.name("space").or_else(|| caps.get(0))?.as_str()
            }
        };
        (!key.is_empty()).then(|| key.to_uppercase())
    }
}

/// Where a listing item names its space: an RFC 6901 pointer, and how the key is read
/// from the value there.
#[derive(Debug, Clone)]
pub struct SpaceExtractor {
    pub pointer: Vec<String>,
    pub name: SpaceName,
}

impl SpaceExtractor {
    /// Parses an RFC 6901 pointer such as `/space/key`.
    pub fn new(pointer: &str, pattern: Option<Regex>) -> Option<SpaceExtractor> {
        let rest = pointer.strip_prefix('/')?;
        let pointer = rest
            .split('/')
            .map(|s| s.replace("~1", "/").replace("~0", "~"))
            .collect();
        Some(SpaceExtractor {
            pointer,
            name: SpaceName { pattern },
        })
    }
}

/// Where a user link names its user, for wikis whose links carry no `data-username`: an
/// attribute and a pattern whose `user` capture (or whole match) is the name (MediaWiki's
/// `title="User:Gary"`).
#[derive(Debug, Clone)]
pub struct UserNameSource {
    pub attribute: String,
    pub pattern: Regex,
}

impl UserNameSource {
    /// The user named by the attribute's value, if the pattern finds one.
    pub fn name_in(&self, value: &str) -> Option<String> {
        let caps = self.pattern.captures(value)?;
        let name = caps.name("user").or_else(|| caps.get(0))?.as_str();
        (!name.is_empty()).then(|| name.to_string())
    }
}
