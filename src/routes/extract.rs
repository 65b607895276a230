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

/// How the wiki compares user names (`user_names` in the profile). The directory and every
/// lookup by name use the wiki's own rule, so that `Gary` and `gary` are one person exactly
/// when the wiki says so.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UserNames {
    /// Names match as written.
    #[default]
    Exact,
    /// Case-insensitive: Confluence looks users up by their lower-cased name
    /// (`HibernateConfluenceUserDao.findByUsername` through `IdentifierUtils.toLowerCase`).
    CaseInsensitive,
    /// MediaWiki's canonical user name (`UserNameUtils::getCanonical`): the first letter
    /// upper-cased, `_` read as a space.
    MediaWiki,
}

impl UserNames {
    /// The one spelling of `name` under this rule.
    pub fn canonical<'n>(self, name: &'n str) -> std::borrow::Cow<'n, str> {
        use std::borrow::Cow;
        match self {
            UserNames::Exact => Cow::Borrowed(name),
            UserNames::CaseInsensitive => {
                if name.chars().any(char::is_uppercase) {
                    Cow::Owned(name.to_lowercase())
                } else {
                    Cow::Borrowed(name)
                }
            }
            UserNames::MediaWiki => {
                let mut chars = name.chars();
                let Some(first) = chars.next() else {
                    return Cow::Borrowed(name);
                };
                if !first.is_lowercase() && !name.contains('_') {
                    return Cow::Borrowed(name);
                }
                let mut out: String = first.to_uppercase().collect();
                out.extend(chars.map(|c| if c == '_' { ' ' } else { c }));
                Cow::Owned(out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_take_the_wikis_one_spelling() {
        assert_eq!(UserNames::Exact.canonical("Gary"), "Gary");
        assert_eq!(UserNames::CaseInsensitive.canonical("GaRy"), "gary");
        assert_eq!(UserNames::CaseInsensitive.canonical("gary"), "gary");
        assert_eq!(UserNames::MediaWiki.canonical("gary_smith"), "Gary smith");
        assert_eq!(UserNames::MediaWiki.canonical("Gary Smith"), "Gary Smith");
        assert_eq!(UserNames::MediaWiki.canonical("émile"), "Émile");
        assert_eq!(UserNames::MediaWiki.canonical(""), "");
    }
}
