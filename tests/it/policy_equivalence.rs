//! The decision facts (`input.user.guest`, `expired`, `permissions`) are computed by the
//! gateway's directory instead of in Rego, for speed. This holds the shipped policy plus
//! those facts to exactly the decisions of the policy that derived everything from `data`
//! (tests/fixtures/reference_authz.rego), over every space-touching combination of user,
//! space, action, token group and instant around each expiry, and a deterministic sample of everything
//! else (families, token groups, profiles, listings, anonymous and public requests).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;

use guestgate::directory::Directory;
use guestgate::policy::input::{self, UserInput};
use guestgate::routes::{Action, Family, Route};
use regorus::{Engine, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

// Each kind of expiry has an instant of its own, so a check of the wrong one shows.
const DATA: &str = r#"{
  "groups": {"staff": {"guest": false}, "g1": {"guest": true}, "g2": {"guest": true}, "g3": {"guest": true}},
  "users": {
    "alice": {"groups": ["staff"]},
    "gary": {"groups": ["g1"]},
    "gina": {"groups": ["g2"]},
    "mia": {"groups": ["g1", "staff"]},
    "bob": {"groups": [{"group": "g2", "expires": "2030-03-01T00:00:00Z"}]},
    "vera": {"groups": ["g1"], "expires": "2030-04-01T00:00:00Z"},
    "tess": {"groups": ["g1", {"group": "g3", "expires": "2030-05-01T00:00:00Z"}]},
    "dora": {"groups": [{"group": "g2", "expires": "2020-01-01T00:00:00Z"}, {"group": "g2", "expires": "2099-01-01T00:00:00Z"}]},
    "hal": {"groups": [{"group": "g2", "expires": "2030-03-01T00:00:00Z"}]}
  },
  "spaces": {
    "ENG": {"guests": {"groups": {"g1": ["view", "comment"]}, "users": {"gina": ["view", "edit", "attach"]}}},
    "HR": {"guests": {"groups": {"g2": ["view"]}, "users": {"hal": ["view", "edit"]}}},
    "TMP": {"guests": {"groups": {"g2": ["view"]},
                       "users": {"tess": {"permissions": ["view", "edit"], "expires": "2030-06-01T12:00:00Z"}}}},
    "GRP": {"guests": {"groups": {"g1": {"permissions": ["view", "export"], "expires": "2030-07-01T00:00:00Z"}}}},
    "DEL": {"guests": {"groups": {"g3": ["view", "delete"]}}}
  }
}"#;

/// Every expiry in DATA; the cases run just before and at each, and well before and after.
const EXPIRIES: [&str; 5] = [
    "2030-03-01T00:00:00Z",
    "2030-04-01T00:00:00Z",
    "2030-05-01T00:00:00Z",
    "2030-06-01T12:00:00Z",
    "2030-07-01T00:00:00Z",
];

fn instants() -> Vec<OffsetDateTime> {
    let at = |s: &str| OffsetDateTime::parse(s, &Rfc3339).unwrap();
    let mut out = vec![at("2026-12-01T00:00:00Z"), at("2031-01-01T00:00:00Z")];
    for e in EXPIRIES {
        out.push(at(e) - time::Duration::nanoseconds(1));
        out.push(at(e));
    }
    out
}

const USERS: [Option<&str>; 11] = [
    Some("alice"),
    Some("gary"),
    Some("gina"),
    Some("mia"),
    Some("bob"),
    Some("vera"),
    Some("tess"),
    Some("dora"),
    Some("hal"),
    Some("nobody"),
    None,
];
const SPACES: [Option<&str>; 8] = [
    Some("ENG"),
    Some("eng"),
    Some("HR"),
    Some("TMP"),
    Some("GRP"),
    Some("DEL"),
    Some("NOPE"),
    None,
];
const TOKEN_GROUPS: [&str; 5] = ["staff", "g1", "g2", "g3", "unknown"];
const PROFILES: [Option<&str>; 5] = [
    None,
    Some("gary"),
    Some("Gina"),
    Some("alice"),
    Some("tess"),
];

/// Evaluates `data.guestgate.decision` of one policy file at an instant given in the input.
fn engine(policy: &Path, data: &Value) -> Engine {
    let mut e = Engine::new();
    e.set_rego_v0(false);
    // As the gateway's engines: a builtin given the wrong type is undefined, not an error.
    e.set_strict_builtin_errors(false);
    e.add_policy_from_file(policy).unwrap();
    e.add_policy(
        "at.rego".into(),
        "package at\nimport rego.v1\ndecision := d if {\n\td := data.guestgate.decision with time.now_ns as input.now_ns\n}\n".into(),
    )
    .unwrap();
    e.add_data(data.clone()).unwrap();
    e
}

struct Case {
    user: Option<&'static str>,
    token: Vec<Arc<str>>,
    family: Family,
    space: Option<&'static str>,
    action: Action,
    profile: Option<&'static str>,
    filtered: bool,
    public: bool,
    instant: OffsetDateTime,
}

struct Lcg(u64);

impl Lcg {
    fn pick(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

fn cases() -> Vec<Case> {
    let instants = instants();
    let mut out = Vec::new();
    // Every space decision a signed-in user can meet, at every instant, with the token
    // naming no group, a guest group of its own, or a regular group.
    for user in USERS.iter().flatten() {
        for token in [&[][..], &["g2"], &["g3"], &["staff"]] {
            for space in SPACES {
                for action in Action::ALL {
                    for &instant in &instants {
                        out.push(Case {
                            user: Some(user),
                            token: token.iter().map(|g| Arc::from(*g)).collect(),
                            family: Family::Space,
                            space,
                            action,
                            profile: None,
                            filtered: false,
                            public: false,
                            instant,
                        });
                    }
                }
            }
        }
    }
    // A sample of everything else.
    let mut rng = Lcg(0x9e37_79b9_7f4a_7c15);
    for _ in 0..2500 {
        let token = (0..rng.pick(3))
            .map(|_| Arc::from(TOKEN_GROUPS[rng.pick(TOKEN_GROUPS.len())]))
            .collect();
        out.push(Case {
            user: USERS[rng.pick(USERS.len())],
            token,
            family: Family::ALL[rng.pick(Family::ALL.len())],
            space: SPACES[rng.pick(SPACES.len())],
            action: Action::ALL[rng.pick(Action::ALL.len())],
            profile: PROFILES[rng.pick(PROFILES.len())],
            filtered: rng.pick(2) == 1,
            public: rng.pick(10) == 0,
            instant: instants[rng.pick(instants.len())],
        });
    }
    out
}

#[test]
fn facts_and_policy_decide_as_the_pure_rego_policy_did() {
    let directory = Directory::parse(Path::new("data.json"), DATA).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut reference = engine(
        &root.join("tests/fixtures/reference_authz.rego"),
        &directory.rego_data,
    );
    let mut current = engine(
        &root.join("policies/guestgate/authz.rego"),
        &directory.rego_data,
    );
    let claims = Value::new_object();
    let cases = cases();
    let mut mismatches = Vec::new();
    let mut allowed = 0;
    for case in &cases {
        let now = case.instant;
        let groups = match case.user {
            Some(u) => directory.effective_groups(u, &case.token),
            None => Vec::new(),
        };
        let route = Route {
            name: Arc::from("t"),
            family: case.family,
            space: case.space.map(Box::from),
            content: None,
            user: case.profile.map(Box::from),
            action: case.action,
            public: case.public,
            rewrites: Default::default(),
            max_body_bytes: None,
            filtered: case.filtered,
            lookup: None,
            rule: None,
            malformed: None,
        };
        let facts = directory.facts(case.user, &groups, case.space, now);
        let mut doc = input::build(
            "GET",
            "/",
            &[],
            &route,
            &UserInput {
                name: case.user,
                groups: &groups,
                authenticated: case.user.is_some(),
                claims: &claims,
                facts: &facts,
            },
        );
        let nanos = i64::try_from(now.unix_timestamp_nanos()).unwrap();
        if let Value::Object(map) = &mut doc {
            Arc::make_mut(map).insert(Value::from("now_ns"), Value::from(nanos));
        }
        let decide = |engine: &mut Engine| {
            engine.set_input(doc.clone());
            engine.eval_rule("data.at.decision".into()).unwrap()
        };
        let (want, got) = (decide(&mut reference), decide(&mut current));
        if want[&Value::from("allow")] == Value::from(true) {
            allowed += 1;
        }
        if want != got {
            mismatches.push(format!(
                "user {:?} token {:?} family {} space {:?} action {} profile {:?} filtered {} public {} at {}: want {} got {}",
                case.user,
                case.token,
                case.family.as_str(),
                case.space,
                case.action.as_str(),
                case.profile,
                case.filtered,
                case.public,
                case.instant.format(&Rfc3339).unwrap(),
                want.to_json_str().unwrap(),
                got.to_json_str().unwrap(),
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} decisions differ:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches[..mismatches.len().min(10)].join("\n")
    );
    // The sample must exercise both outcomes, or it proves nothing.
    assert!(
        allowed > 200 && allowed < cases.len() - 200,
        "{allowed} allowed"
    );
}
