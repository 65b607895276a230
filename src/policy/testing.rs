//! The Rego unit-test runner behind `guestgate test` and `guestgate check`: every rule named
//! `test_*` in the policy dir is evaluated with the policies and data loaded, and passes iff
//! it is exactly `true` (OPA's `opa test` semantics). Fixtures are named `fx_*`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use regorus::Value;

use super::{PolicyError, engine_with};

/// The outcome of one test rule.
#[derive(Debug, Clone)]
pub struct TestOutcome {
    /// `data.<package>.<rule>`.
    pub name: String,
    pub file: PathBuf,
    pub passed: bool,
    /// Why it failed: `false`, undefined, or the evaluation error.
    pub detail: Option<String>,
}

/// A test rule may walk many cases in one evaluation (every family, every boundary), on a
/// busy CI machine, in a debug build: it gets this long however tight the request-path
/// `policy.eval_timeout_ms` is, so a slow machine never fails a correct test.
const TEST_EVAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs every `test_*` rule of `files` against `data`.
pub fn run_tests(
    files: &[(PathBuf, String)],
    data: &Value,
    eval_timeout: Duration,
) -> Result<Vec<TestOutcome>, PolicyError> {
    let engine = engine_with(files, data, eval_timeout.max(TEST_EVAL_TIMEOUT))?;
    let mut outcomes = Vec::new();
    for (file, text) in files {
        let Some(package) = package_of(text) else {
            continue;
        };
        for rule in test_rules(text) {
            let name = format!("data.{package}.{rule}");
            let mut engine = engine.clone();
            let (passed, detail) = match engine.eval_rule(name.clone()) {
                Ok(Value::Bool(true)) => (true, None),
                Ok(Value::Undefined) => (false, Some("undefined".to_string())),
                Ok(other) => (
                    false,
                    Some(other.to_json_str().unwrap_or_else(|_| "not true".into())),
                ),
                Err(e) => (false, Some(e.to_string())),
            };
            outcomes.push(TestOutcome {
                name,
                file: file.clone(),
                passed,
                detail,
            });
        }
    }
    Ok(outcomes)
}

fn package_of(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let rest = l.trim_start().strip_prefix("package ")?;
        Some(rest.split('#').next()?.trim().to_string())
    })
}

/// Names of the `test_*` rules defined at the start of a line, each once.
fn test_rules(text: &str) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for line in text.lines() {
        if !line.starts_with("test_") {
            continue;
        }
        let name: String = line
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if seen.insert(name.clone()) {
            out.push(name);
        }
    }
    out
}
