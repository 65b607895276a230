//! `guestgate audit`: the wiki's own permissions for guest accounts, compared with what the
//! data document grants them. Some leaks no URL rule can stop — a macro in a granted page
//! that renders another space's content, a watch e-mail — because the wiki acts with the
//! permissions of the guest's own wiki account; this says where that account can see or do
//! more (or less) than the grants, and how to make the two agree (docs/WIKI-PERMISSIONS.md).

pub mod confluence;
pub mod mediawiki;
mod wiki;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use time::OffsetDateTime;

use crate::config::{Config, WikiKind};
use crate::directory::{Directory, Standing};
use crate::routes::Action;

pub use wiki::WikiClient;

/// Why an audit could not be made (as opposed to what it found).
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(
        "audit.wiki is not set and the route profile's name does not say which wiki this is (`confluence` or `mediawiki`)"
    )]
    UnknownWiki,
    #[error("the wiki cannot be reached: {0}")]
    Unreachable(String),
    #[error("the wiki refused the service credentials: {0}")]
    Credentials(String),
    #[error("the wiki has no {0}")]
    NotFound(String),
    #[error("the wiki refused {what}: {why}")]
    Refused { what: String, why: String },
    #[error("the wiki's answer to {what} is not what its documented shape says: {why}")]
    Unexpected { what: String, why: String },
    #[error("{0}")]
    Setup(String),
}

/// Whose permission a wiki entry is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Subject {
    Group(String),
    User(String),
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Group(g) => write!(f, "group {g}"),
            Subject::User(u) => write!(f, "user {u}"),
        }
    }
}

/// A change the wiki can be asked to make.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    /// Give `subject` the wiki permission `permission` in `space`.
    Grant {
        space: String,
        subject: Subject,
        permission: String,
    },
    /// Take it away.
    Revoke {
        space: String,
        subject: Subject,
        permission: String,
    },
    /// Take the user out of a wiki group (MediaWiki's user groups).
    LeaveGroup { user: String, group: String },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Grant {
                space,
                subject,
                permission,
            } => write!(f, "grant {permission} in {space} to {subject}"),
            Change::Revoke {
                space,
                subject,
                permission,
            } => write!(f, "revoke {permission} in {space} from {subject}"),
            Change::LeaveGroup { user, group } => {
                write!(f, "remove user {user} from wiki group {group}")
            }
        }
    }
}

/// How a finding is put right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fix {
    /// `--apply` makes it.
    Change(Change),
    /// A person must (the wiki has no API for it, or the fix is a judgement call).
    Manual(String),
}

/// One place where the wiki and the data document disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// `true`: the wiki lets a guest account see or do more than granted (a leak);
    /// `false`: less (the wiki will refuse what the gateway lets through).
    pub excess: bool,
    pub what: String,
    pub fix: Fix,
}

/// What one audit found.
#[derive(Debug, Clone)]
pub struct Report {
    pub wiki: WikiKind,
    pub findings: Vec<Finding>,
    /// What the wiki gives no way to read, to be checked by a person.
    pub unchecked: Vec<String>,
    pub at: SystemTime,
}

impl Report {
    pub fn agrees(&self) -> bool {
        self.findings.is_empty()
    }

    /// The changes `--apply` makes, in order (grants before revocations: a guest never
    /// loses more than they should in between).
    pub fn plan(&self) -> Vec<Change> {
        let mut changes: Vec<Change> = self
            .findings
            .iter()
            .filter_map(|f| match &f.fix {
                Fix::Change(c) => Some(c.clone()),
                Fix::Manual(_) => None,
            })
            .collect();
        changes.sort();
        changes.dedup();
        changes
    }

    /// The findings as text, one per line, for a terminal.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if self.findings.is_empty() {
            out.push_str("The wiki agrees with the data document.\n");
        }
        for f in &self.findings {
            let kind = if f.excess { "MORE" } else { "LESS" };
            out.push_str(&format!("{kind}  {}\n", f.what));
            match &f.fix {
                Fix::Change(c) => out.push_str(&format!("      fix: {c}\n")),
                Fix::Manual(m) => out.push_str(&format!("      fix by hand: {m}\n")),
            }
        }
        for u in &self.unchecked {
            out.push_str(&format!("UNCHECKED  {u}\n"));
        }
        out
    }

    pub fn to_json(&self) -> serde_json::Value {
        let at = OffsetDateTime::from(self.at)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        serde_json::json!({
            "wiki": match self.wiki { WikiKind::Confluence => "confluence", WikiKind::MediaWiki => "mediawiki" },
            "checked_at": at,
            "agrees": self.agrees(),
            "findings": self.findings.iter().map(|f| serde_json::json!({
                "kind": if f.excess { "more" } else { "less" },
                "what": f.what,
                "fix": match &f.fix { Fix::Change(c) => c.to_string(), Fix::Manual(m) => format!("by hand: {m}") },
            })).collect::<Vec<_>>(),
            "unchecked": self.unchecked,
        })
    }
}

/// What the data document grants guests, at one instant: the wiki is compared with this.
#[derive(Debug, Clone, Default)]
pub struct Expected {
    /// Declared guest groups.
    pub guest_groups: BTreeSet<String>,
    /// Users the document declares, whose groups make them guests.
    pub guest_users: BTreeMap<String, Vec<String>>,
    /// Users the document declares regular: never audited as guest accounts, even when the
    /// wiki also has them in a guest group.
    pub regular_users: BTreeSet<String>,
    /// Guests whose access has ended: their accounts should hold nothing.
    pub ended_users: BTreeSet<String>,
    /// Upper-cased space key → subject → the permissions its active grants give there.
    pub grants: BTreeMap<String, BTreeMap<Subject, BTreeSet<Action>>>,
}

impl Expected {
    pub fn from_directory(directory: &Directory, now: OffsetDateTime) -> Expected {
        let guest_groups: BTreeSet<String> = directory
            .groups
            .iter()
            .filter(|(_, g)| g.guest)
            .map(|(name, _)| name.clone())
            .collect();
        // As the gateway judges them now: a lapsed membership gives nothing, and a guest
        // whose access has ended holds nothing at all (their wiki account should not either).
        let ended = |u: &crate::directory::User| u.expires.is_some_and(|e| e <= now);
        let guest_users = directory
            .users
            .iter()
            .filter(|(_, u)| directory.standing(&u.groups) == Standing::Guest)
            .map(|(name, u)| {
                let active = u
                    .groups
                    .iter()
                    .filter(|g| {
                        !ended(u) && u.membership_expires.get(&***g).is_none_or(|e| now < *e)
                    })
                    .map(|g| g.to_string())
                    .collect();
                (name.clone(), active)
            })
            .collect();
        let ended_users: BTreeSet<String> = directory
            .users
            .iter()
            .filter(|(_, u)| ended(u))
            .map(|(name, _)| name.clone())
            .collect();
        let regular_users = directory
            .users
            .iter()
            .filter(|(_, u)| directory.standing(&u.groups) == Standing::Regular)
            .map(|(name, _)| name.clone())
            .collect();
        let mut grants: BTreeMap<String, BTreeMap<Subject, BTreeSet<Action>>> = BTreeMap::new();
        for (space, g) in &directory.spaces {
            let entry = grants.entry(space.clone()).or_default();
            for (group, grant) in &g.groups {
                if grant.active_at(now) && guest_groups.contains(group) {
                    entry
                        .entry(Subject::Group(group.clone()))
                        .or_default()
                        .extend(grant.permissions.iter().copied());
                }
            }
            for (user, grant) in &g.users {
                if grant.active_at(now) && !ended_users.contains(user) {
                    entry
                        .entry(Subject::User(user.clone()))
                        .or_default()
                        .extend(grant.permissions.iter().copied());
                }
            }
        }
        Expected {
            guest_groups,
            guest_users,
            regular_users,
            ended_users,
            grants,
        }
    }

    /// What `subject`'s own grant gives in `space`.
    pub fn own(&self, space: &str, subject: &Subject) -> BTreeSet<Action> {
        self.grants
            .get(&space.to_uppercase())
            .and_then(|s| s.get(subject))
            .cloned()
            .unwrap_or_default()
    }

    /// What a guest account holds in `space`: its own grant and its guest groups' (the
    /// groups the document names for it, and `wiki_groups`, its groups on the wiki).
    pub fn effective(&self, space: &str, user: &str, wiki_groups: &[String]) -> BTreeSet<Action> {
        if self.ended_users.contains(user) {
            return BTreeSet::new();
        }
        let mut all = self.own(space, &Subject::User(user.to_string()));
        let declared = self.guest_users.get(user).into_iter().flatten();
        for group in declared.chain(wiki_groups) {
            if let Some(group) = self.guest_group(group) {
                all.extend(self.own(space, &Subject::Group(group.clone())));
            }
        }
        all
    }

    /// The document's guest group `name` names, compared as Confluence compares group names
    /// (it stores them lower-cased).
    pub fn guest_group(&self, name: &str) -> Option<&String> {
        self.guest_groups
            .iter()
            .find(|g| g.eq_ignore_ascii_case(name))
    }
}

/// Audits the wiki `config` names against `directory`.
pub async fn audit(config: &Config, directory: &Directory) -> Result<Report, AuditError> {
    let expected = Expected::from_directory(directory, OffsetDateTime::now_utc());
    let client = WikiClient::new(config)?;
    let work = async {
        match config.audit.wiki {
            Some(WikiKind::Confluence) => confluence::audit(&client, &expected).await,
            Some(WikiKind::MediaWiki) => mediawiki::audit(&client, &expected).await,
            None => Err(AuditError::UnknownWiki),
        }
    };
    let (findings, unchecked) = tokio::time::timeout(config.audit.timeout, work)
        .await
        .map_err(|_| {
            AuditError::Unreachable(format!(
                "the audit did not end within audit.timeout_secs ({} s)",
                config.audit.timeout.as_secs()
            ))
        })??;
    Ok(Report {
        wiki: config.audit.wiki.unwrap_or(WikiKind::Confluence),
        findings,
        unchecked,
        at: SystemTime::now(),
    })
}

/// Makes `changes`, in order, stopping at the first the wiki refuses; returns how many
/// were made with the error.
pub async fn apply(config: &Config, changes: &[Change]) -> Result<usize, (usize, AuditError)> {
    let client = WikiClient::new(config).map_err(|e| (0, e))?;
    for (done, change) in changes.iter().enumerate() {
        let result = match config.audit.wiki {
            Some(WikiKind::Confluence) => confluence::apply(&client, change).await,
            Some(WikiKind::MediaWiki) => mediawiki::apply(&client, change).await,
            None => Err(AuditError::UnknownWiki),
        };
        result.map_err(|e| (done, e))?;
    }
    Ok(changes.len())
}

/// The gateway's last audit (`audit.interval_secs`), for `/guests` and the metric.
#[derive(Debug, Default)]
pub struct LastAudit {
    last: arc_swap::ArcSwapOption<Result<Report, String>>,
}

impl LastAudit {
    pub fn store(&self, result: Result<Report, String>) {
        self.last.store(Some(Arc::new(result)));
    }

    pub fn load(&self) -> Option<Arc<Result<Report, String>>> {
        self.last.load_full()
    }

    /// `guestgate_wiki_permission_drift`: the last audit's findings; -1 when it failed;
    /// absent before the first.
    pub fn render_metric(&self, out: &mut String) {
        let Some(last) = self.load() else { return };
        let value = match &*last {
            Ok(report) => report.findings.len() as i64,
            Err(_) => -1,
        };
        out.push_str(
            "# HELP guestgate_wiki_permission_drift Places where the wiki's own permissions for guest accounts disagree with the data document, at the last audit (-1: the audit failed).\n\
             # TYPE guestgate_wiki_permission_drift gauge\n",
        );
        out.push_str(&format!("guestgate_wiki_permission_drift {value}\n"));
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self.load().as_deref() {
            None => serde_json::Value::Null,
            Some(Ok(report)) => report.to_json(),
            Some(Err(e)) => serde_json::json!({"agrees": null, "error": e}),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn directory(text: &str) -> Directory {
        Directory::parse(std::path::Path::new("data.json"), text).expect("a valid document")
    }

    #[test]
    fn expected_holds_active_guest_grants_only() {
        let d = directory(
            r#"{"groups": {"staff": {}, "acme": {"guest": true}},
                "users": {"gary": {"groups": ["acme"]}, "alice": {"groups": ["staff"]},
                          "gwen": {"groups": ["acme"], "expires": "2001-01-01T00:00:00Z"}},
                "spaces": {"eng": {"guests": {"groups": {"acme": ["view", "comment"]},
                                             "users": {"gary": {"permissions": ["edit"], "expires": "2001-01-01T00:00:00Z"}}}}}}"#,
        );
        let e = Expected::from_directory(&d, OffsetDateTime::now_utc());
        assert_eq!(e.guest_groups, BTreeSet::from(["acme".to_string()]));
        assert_eq!(
            e.guest_users.keys().collect::<Vec<_>>(),
            vec!["gary", "gwen"]
        );
        assert!(
            e.effective("ENG", "gwen", &["acme".to_string()]).is_empty(),
            "a guest whose access ended holds nothing"
        );
        assert_eq!(e.guest_group("ACME"), Some(&"acme".to_string()));
        assert_eq!(e.regular_users, BTreeSet::from(["alice".to_string()]));
        assert_eq!(
            e.own("ENG", &Subject::Group("acme".into())),
            BTreeSet::from([Action::View, Action::Comment])
        );
        assert!(e.own("HR", &Subject::Group("acme".into())).is_empty());
        assert!(
            e.own("ENG", &Subject::User("gary".into())).is_empty(),
            "expired"
        );
        assert_eq!(
            e.effective("eng", "gary", &[]),
            BTreeSet::from([Action::View, Action::Comment])
        );
    }
}
