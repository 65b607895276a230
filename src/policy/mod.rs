//! Rego policies: compiled once per snapshot, evaluated per request through the regorus
//! interpreter (never its RVM, which answered `every` and `else` chains wrongly in 0.14.1;
//! see STACK-NOTES), on a thread-local clone of a prepared engine.

pub mod input;
pub mod testing;

use std::cell::RefCell;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::StatusCode;
use regorus::{Engine, Value};

/// A problem loading or evaluating a policy.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PolicyError {
    /// A file could not be read or compiled; the message carries `file:line:col`.
    #[error("{0}")]
    Load(String),
    /// Evaluation failed (runtime error, time limit, missing rule).
    #[error("policy evaluation failed: {0}")]
    Eval(String),
    /// The rule gave something other than an object.
    #[error("policy result is not an object: {0}")]
    Shape(String),
}

/// What the policy decided for one request (docs/POLICIES.md).
#[derive(Debug, Clone)]
pub struct Decision {
    pub allow: bool,
    pub reason: Arc<str>,
    pub guest: bool,
    /// The status of a denial (default 403).
    pub status: StatusCode,
    /// The rule's whole result, for the decision log and `eval`.
    pub result: Value,
}

impl Decision {
    /// Reads the rule's result. `allow` must be exactly `true` to allow; a result that is not
    /// an object is an error (and so a denial upstream of here).
    pub fn from_value(result: Value) -> Result<Decision, PolicyError> {
        let Value::Object(obj) = &result else {
            return Err(PolicyError::Shape(
                result.to_json_str().unwrap_or_else(|_| "undefined".into()),
            ));
        };
        let field = |name: &str| obj.get(&Value::from(name));
        let allow = matches!(field("allow"), Some(Value::Bool(true)));
        let guest = matches!(field("guest"), Some(Value::Bool(true)));
        let reason: Arc<str> = match field("reason") {
            Some(Value::String(s)) if is_reason_word(s) => Arc::from(&**s),
            _ if allow => Arc::from("allowed"),
            _ => Arc::from("denied"),
        };
        let status = field("status")
            .and_then(|v| v.as_u64().ok())
            .and_then(|s| u16::try_from(s).ok())
            .and_then(|s| StatusCode::from_u16(s).ok())
            .filter(|s| s.is_client_error() || s.is_server_error())
            .unwrap_or(StatusCode::FORBIDDEN);
        Ok(Decision {
            allow,
            reason,
            guest,
            status,
            result,
        })
    }
}

/// A reason reaches clients and logs, so it must stay a short snake_case word.
fn is_reason_word(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Policies and data compiled into one prepared engine.
pub struct Policy {
    /// Unique per compiled policy, so thread-local engines know when to re-clone.
    generation: u64,
    prepared: Engine,
    query: String,
    /// Whether the policies read parts of the input beyond the route and the user's name and
    /// groups; if so the decision cache key must cover the whole input.
    pub reads_whole_input: bool,
    /// The `.rego` files that were loaded (tests excluded), with their text.
    pub sources: Vec<(PathBuf, String)>,
    /// `*_test.rego` files beside them.
    pub test_sources: Vec<(PathBuf, String)>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("generation", &self.generation)
            .field("query", &self.query)
            .field("files", &self.sources.len())
            .finish()
    }
}

static GENERATION: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static LOCAL_ENGINE: RefCell<Option<(u64, Engine)>> = const { RefCell::new(None) };
}

/// Reads every `*.rego` under `dir` (recursively), sorted by path so revisions are stable.
pub fn read_policy_dir(dir: &Path) -> Result<Vec<(PathBuf, String)>, PolicyError> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                walk(&path, out)?;
            } else if path.extension().is_some_and(|e| e == "rego") {
                out.push(path);
            }
        }
        Ok(())
    }
    let mut paths = Vec::new();
    walk(dir, &mut paths).map_err(|e| {
        PolicyError::Load(format!("{}: cannot read policy dir: {e}", dir.display()))
    })?;
    paths.sort();
    if paths.is_empty() {
        return Err(PolicyError::Load(format!(
            "{}: no .rego files found",
            dir.display()
        )));
    }
    paths
        .into_iter()
        .map(|p| {
            std::fs::read_to_string(&p)
                .map(|text| (p.clone(), text))
                .map_err(|e| PolicyError::Load(format!("{}: {e}", p.display())))
        })
        .collect()
}

pub fn is_test_file(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with("_test.rego"))
}

/// Builds an engine holding `files` and `data`.
pub(crate) fn engine_with(
    files: &[(PathBuf, String)],
    data: &Value,
    eval_timeout: Duration,
) -> Result<Engine, PolicyError> {
    let mut engine = Engine::new();
    engine.set_rego_v0(false);
    engine.set_strict_builtin_errors(false);
    engine.set_execution_timer_config(regorus::utils::limits::ExecutionTimerConfig {
        limit: eval_timeout,
        check_interval: NonZeroU32::new(64).unwrap_or(NonZeroU32::MIN),
    });
    for (path, text) in files {
        engine
            .add_policy(path.display().to_string(), text.clone())
            .map_err(|e| PolicyError::Load(e.to_string()))?;
    }
    engine
        .add_data(data.clone())
        .map_err(|e| PolicyError::Load(format!("data: {e}")))?;
    Ok(engine)
}

impl Policy {
    /// Compiles the policy files (tests set aside) with `data`, and prepares the engine by
    /// evaluating `query` once, so that a missing rule is a load error, not a runtime one.
    pub fn compile(
        files: Vec<(PathBuf, String)>,
        data: &Value,
        query: &str,
        eval_timeout: Duration,
    ) -> Result<Policy, PolicyError> {
        let (test_sources, sources): (Vec<_>, Vec<_>) =
            files.into_iter().partition(|(p, _)| is_test_file(p));
        let mut engine = engine_with(&sources, data, eval_timeout)?;
        engine.set_input(input::sample());
        match engine.eval_rule(query.to_string()) {
            Ok(_) => {}
            Err(e) => {
                return Err(PolicyError::Load(format!(
                    "policy.query `{query}` cannot be evaluated: {e}"
                )));
            }
        }
        let reads_whole_input = sources.iter().any(|(_, text)| reads_beyond_key(text));
        Ok(Policy {
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            prepared: engine,
            query: query.to_string(),
            reads_whole_input,
            sources,
            test_sources,
        })
    }

    /// Evaluates the query for one input on this thread's engine.
    pub fn evaluate(&self, input: Value) -> Result<Decision, PolicyError> {
        Decision::from_value(self.evaluate_rule(self.query.clone(), input)?)
    }

    /// Evaluates any rule of the compiled policies for one input on this thread's engine.
    pub fn evaluate_rule(&self, rule: String, input: Value) -> Result<Value, PolicyError> {
        LOCAL_ENGINE
            .with(|cell| {
                let mut slot = cell.borrow_mut();
                let engine = match &mut *slot {
                    Some((generation, engine)) if *generation == self.generation => engine,
                    other => {
                        let (_, engine) = other.insert((self.generation, self.prepared.clone()));
                        engine
                    }
                };
                engine.set_input(input);
                engine.eval_rule(rule)
            })
            .map_err(|e| PolicyError::Eval(e.to_string()))
    }
}

/// Parts of the input the decision cache keys on without looking at the whole input. The
/// directory's facts (`guest`, `expired`, `permissions`) follow from the user, the groups and
/// the route's space, and no cached answer outlives the next expiry that could change them.
const KEYED_INPUT_PATHS: [&str; 8] = [
    "input.route.",
    "input.user.name",
    "input.user.groups",
    "input.user.authenticated",
    "input.user.regular",
    "input.user.guest",
    "input.user.expired",
    "input.user.permissions",
];

/// True when the policy text mentions `input` in any way other than the keyed paths (for
/// example `input.request.path` or `input.user.claims`). Conservative on purpose: a false
/// positive only lowers the cache hit rate, a false negative would serve wrong decisions.
fn reads_beyond_key(text: &str) -> bool {
    for line in text.lines() {
        let code = line.split('#').next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("input") {
            let before_ok = at == 0
                || !rest.as_bytes()[at - 1].is_ascii_alphanumeric()
                    && rest.as_bytes()[at - 1] != b'_';
            let after = &rest[at..];
            let word_end = after
                .as_bytes()
                .get(5)
                .is_none_or(|b| !(b.is_ascii_alphanumeric() || *b == b'_'));
            if before_ok && word_end && !KEYED_INPUT_PATHS.iter().any(|p| after.starts_with(p)) {
                return true;
            }
            rest = &rest[at + 5..];
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_reads_beyond_the_cache_key() {
        assert!(!reads_beyond_key(
            "x if input.route.family == \"space\"\n# input.request.path\n"
        ));
        assert!(!reads_beyond_key(
            "g := input.user.groups\nn := input.user.name\nmy_input := 1"
        ));
        assert!(reads_beyond_key("p := input.request.path"));
        assert!(reads_beyond_key("c := input.user.claims.email"));
        assert!(reads_beyond_key("x := input"));
        assert!(reads_beyond_key("x := input[\"request\"]"));
    }

    #[test]
    fn decision_shape() {
        let v = Value::from_json_str(r#"{"allow": true, "reason": "ok", "guest": true}"#)
            .expect("json");
        let d = Decision::from_value(v).expect("object");
        assert!(d.allow && d.guest);
        let v = Value::from_json_str(r#"{"allow": "true", "status": 200, "reason": "Bad Reason"}"#)
            .expect("json");
        let d = Decision::from_value(v).expect("object");
        assert!(!d.allow, "only the boolean true allows");
        assert_eq!(d.status, StatusCode::FORBIDDEN);
        assert_eq!(&*d.reason, "denied");
        assert!(Decision::from_value(Value::Undefined).is_err());
    }
}
