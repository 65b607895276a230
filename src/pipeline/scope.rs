//! Scope a guest's search at the wiki. Filtering a listing's items leaves the totals and
//! cursors the wiki computed over everything (`totalSize`, `_links.next`): with `limit=0`
//! a count alone answers any query about another space. So the query itself is narrowed
//! to the guest's spaces before the wiki runs it, and what the wiki counts is true.

use crate::pipeline::error::GatewayError;

/// `(<cql>) AND space IN ("A","B")`, a trailing `ORDER BY` kept outside the parentheses.
/// Keys are those the guest may view; with none, a key no space can have, so the query
/// matches nothing (CQL drops unknown keys: `SpaceKeyFieldHandler` resolves each through
/// the space manager, and an empty set matches nothing). Only keys in Confluence's own
/// syntax (letters and digits) are written, so no quoting is needed. A query whose
/// parentheses or quotes do not balance is refused: `x) OR (y` would escape the wrapping.
pub fn scoped_cql<'k>(
    cql: &str,
    spaces: impl Iterator<Item = &'k str>,
) -> Result<String, GatewayError> {
    let keys: Vec<String> = spaces
        .filter(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric()))
        .map(|k| format!("\"{k}\""))
        .collect();
    let keys = if keys.is_empty() {
        "\"~\"".to_string()
    } else {
        keys.join(",")
    };
    let order_at = top_level_order_by(cql)?;
    let (query, order) = match order_at {
        Some(at) => (&cql[..at], Some(&cql[at..])),
        None => (cql, None),
    };
    let mut out = format!("({}) AND space IN ({keys})", query.trim());
    if let Some(order) = order {
        out.push(' ');
        out.push_str(order.trim());
    }
    Ok(out)
}

/// Where a top-level `ORDER BY` clause starts, after checking that quotes and
/// parentheses balance.
fn top_level_order_by(cql: &str) -> Result<Option<usize>, GatewayError> {
    let unbalanced = || GatewayError::BadRequest("unbalanced_cql");
    let bytes = cql.as_bytes();
    let mut depth = 0usize;
    let mut quote: Option<u8> = None;
    let mut found = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(_) if b == b'\\' => i += 1,
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None => match b {
                b'"' | b'\'' => quote = Some(b),
                b'(' => depth += 1,
                b')' => depth = depth.checked_sub(1).ok_or_else(unbalanced)?,
                _ if depth == 0 && starts_order_by(&cql[i..]) && word_starts(bytes, i) => {
                    found = Some(i);
                }
                _ => {}
            },
        }
        i += 1;
    }
    if depth != 0 || quote.is_some() {
        return Err(unbalanced());
    }
    Ok(found)
}

/// `ORDER BY`, any case, any white space between the words, a word boundary after.
fn starts_order_by(rest: &str) -> bool {
    let Some(after) = strip_word(rest, "order") else {
        return false;
    };
    let after = after.trim_start();
    after.len() < rest.len() - 5 && strip_word(after, "by").is_some()
}

fn strip_word<'s>(s: &'s str, word: &str) -> Option<&'s str> {
    let head = s.get(..word.len())?;
    let rest = &s[word.len()..];
    (head.eq_ignore_ascii_case(word) && rest.chars().next().is_none_or(char::is_whitespace))
        .then_some(rest)
}

fn word_starts(bytes: &[u8], i: usize) -> bool {
    i == 0 || bytes[i - 1].is_ascii_whitespace() || bytes[i - 1] == b')'
}

/// The query string with `param` replaced by `value`, every other parameter kept in order.
/// A parameter the guest names twice is refused: the wiki reads the first, and the
/// gateway must rewrite the one the wiki reads.
pub fn with_param(
    params: &[(String, String)],
    param: &str,
    value: &str,
) -> Result<String, GatewayError> {
    if params.iter().filter(|(k, _)| k == param).count() > 1 {
        return Err(GatewayError::BadRequest("duplicate_query_parameter"));
    }
    let mut query = form_urlencoded::Serializer::new(String::new());
    let mut replaced = false;
    for (k, v) in params {
        if k == param {
            query.append_pair(k, value);
            replaced = true;
        } else {
            query.append_pair(k, v);
        }
    }
    if !replaced {
        query.append_pair(param, value);
    }
    Ok(query.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scoped(cql: &str, keys: &[&str]) -> Option<String> {
        scoped_cql(cql, keys.iter().copied()).ok()
    }

    #[test]
    fn the_query_is_narrowed_to_the_guests_spaces() {
        assert_eq!(
            scoped("space=HR and text~layoffs", &["ENG", "DOCS"]).as_deref(),
            Some(r#"(space=HR and text~layoffs) AND space IN ("ENG","DOCS")"#)
        );
        assert_eq!(
            scoped("type=page", &[]).as_deref(),
            Some(r#"(type=page) AND space IN ("~")"#),
            "no viewable space: nothing matches"
        );
        assert_eq!(
            scoped("type=page order  by lastmodified desc", &["ENG", "bad key"]).as_deref(),
            Some(r#"(type=page) AND space IN ("ENG") order  by lastmodified desc"#)
        );
        assert_eq!(
            scoped(r#"title ~ "order by x" OR (a=b)"#, &["ENG"]).as_deref(),
            Some(r#"(title ~ "order by x" OR (a=b)) AND space IN ("ENG")"#),
            "only a top-level ORDER BY is split off"
        );
        assert_eq!(
            scoped("reorder=1", &["ENG"]).as_deref(),
            Some(r#"(reorder=1) AND space IN ("ENG")"#)
        );
    }

    #[test]
    fn a_query_that_could_escape_its_parentheses_is_refused() {
        for bad in [
            "x=1) OR (space=HR",
            "x=1 OR (space=HR",
            "title ~ \"x) OR (y",
            "a=1))",
        ] {
            assert!(scoped(bad, &["ENG"]).is_none(), "{bad}");
        }
        assert!(
            scoped(r#"title ~ "a\"b""#, &["ENG"]).is_some(),
            "escaped quote"
        );
    }

    #[test]
    fn the_parameter_is_replaced_in_place() {
        let params = vec![
            ("cql".to_string(), "type=page".to_string()),
            ("limit".to_string(), "0".to_string()),
        ];
        assert_eq!(
            with_param(&params, "cql", "(type=page) AND space IN (\"ENG\")").ok(),
            Some("cql=%28type%3Dpage%29+AND+space+IN+%28%22ENG%22%29&limit=0".to_string())
        );
        let twice = vec![
            ("cql".to_string(), "a".to_string()),
            ("cql".to_string(), "b".to_string()),
        ];
        assert!(with_param(&twice, "cql", "x").is_err());
    }
}
