//! The accept and classify stages on arbitrary request targets against the shipped
//! Confluence profile: no panic, and the route of an accepted request depends only on its
//! canonical form (classifying the canonical path again gives the same route).
#![no_main]

use std::sync::OnceLock;

use guestgate::config::{Config, ServerConfig};
use guestgate::pipeline::accept::accept;
use guestgate::pipeline::canonical::canonicalize;
use guestgate::routes::RouteProfile;
use libfuzzer_sys::fuzz_target;

const PROFILE: &str = include_str!("../../config/routes/confluence.toml");
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PROPFIND",
];

fn setup() -> &'static (RouteProfile, ServerConfig) {
    static SETUP: OnceLock<(RouteProfile, ServerConfig)> = OnceLock::new();
    SETUP.get_or_init(|| {
        let profile = RouteProfile::parse(std::path::Path::new("confluence.toml"), PROFILE)
            .expect("shipped profile");
        let config = Config::from_toml(
            std::path::Path::new("/tmp/guestgate.toml"),
            "[upstream]\nurl = \"http://127.0.0.1:1\"\n",
        )
        .expect("config");
        (profile, config.server)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let Ok(target) = std::str::from_utf8(rest) else {
        return;
    };
    let (profile, server) = setup();
    let method = METHODS[usize::from(m) % METHODS.len()];
    let Ok(req) = http::Request::builder().method(method).uri(target).body(()) else {
        return;
    };
    let Ok(accepted) = accept(&req, server, profile) else {
        return;
    };
    let route = profile.classify(&accepted.method, &accepted.path, &accepted.params);
    if let Some(space) = &route.space {
        assert_eq!(space.to_uppercase(), **space, "space keys are upper-cased");
    }
    if let Some(content) = &route.content {
        assert!(!content.is_empty());
    }
    assert_eq!(
        canonicalize(&accepted.path).as_deref(),
        Ok(accepted.path.as_str())
    );
    let again = profile.classify(&accepted.method, &accepted.path, &accepted.params);
    assert_eq!(again, route);
});
