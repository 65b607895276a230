//! Test support, by role: a recording upstream on loopback (`upstream`), a real gateway on
//! port 0 in front of it (`gateway`), token minting (`tokens`), an HTTP client (`client`)
//! and a real OpenID Provider (`oidc`). Everything binds to 127.0.0.1 port 0.
#![allow(dead_code, clippy::unwrap_used)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use guestgate::config::Config;
use guestgate::gateway::Gateway;
use guestgate::server::{self, Running};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

pub const SECRET: &str = "integration-test-secret-0123456789abcdef";
pub const ISSUER: &str = "https://idp.test";
pub const AUDIENCE: &str = "wiki";

mod client;
mod gateway;
#[macro_use]
mod oidc;
mod postgres;
mod tokens;
mod upstream;

pub use client::*;
pub use gateway::*;

/// Runs the real `guestgate` binary with `args`, `RUST_LOG` removed and `env` set (`None`:
/// removed); its exit code, stdout and stderr.
pub fn run_guestgate(args: &[&str], env: &[(&str, Option<&str>)]) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_guestgate"));
    cmd.args(args).env_remove("RUST_LOG");
    for (name, value) in env {
        match value {
            Some(v) => cmd.env(name, v),
            None => cmd.env_remove(name),
        };
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// As [`run_guestgate`], off the async runtime.
pub async fn run_guestgate_async(
    args: Vec<String>,
    env: Vec<(String, Option<String>)>,
) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, Option<&str>)> = env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref()))
            .collect();
        run_guestgate(&args, &env)
    })
    .await
    .unwrap()
}

/// A test whose outside program is missing here says so, one `SKIP <test>: <why>` line,
/// where a plain `cargo test` shows it: written to stderr directly, because the harness
/// captures only what `eprintln!` prints of passing tests. Where `require` is set (`.ci/run`
/// sets every `GUESTGATE_REQUIRE_*`), a skip is a failure instead.
pub fn skip(require: &str, test: &str, why: &str) {
    assert!(
        std::env::var_os(require).is_none(),
        "{test} cannot run here, and {require} is set: {why}"
    );
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {why}");
}
pub use oidc::*;
pub use postgres::*;
pub use tokens::*;
pub use upstream::*;
