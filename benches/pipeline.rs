//! Per-stage costs of the request path, without sockets (issue: decision ≤ 1 µs cached,
//! ≤ 25 µs uncached with 100k users / 10k spaces / 100k grants; cost must not grow with
//! the directory). Run: `cargo bench --bench pipeline`.

use std::path::Path;
use std::sync::Arc;

// The allocator the binary uses (src/main.rs), so the figures are the production ones.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use guestgate::config::Config;
use guestgate::http::canonical;
use guestgate::identity::{Caller, Identity};
use guestgate::pipeline::{accept, classify, decide};
use guestgate::snapshot::Snapshot;

/// A data document with `users` users, `spaces` spaces and about `users` grants.
fn data(users: usize, spaces: usize) -> String {
    let mut groups = serde_json::Map::new();
    groups.insert("staff".into(), serde_json::json!({"guest": false}));
    for g in 0..(users / 10).max(1) {
        groups.insert(format!("guests-{g}"), serde_json::json!({"guest": true}));
    }
    let mut user_map = serde_json::Map::new();
    for u in 0..users {
        let group = if u % 2 == 0 {
            "staff".to_string()
        } else {
            format!("guests-{}", u % (users / 10).max(1))
        };
        user_map.insert(format!("user{u}"), serde_json::json!({"groups": [group]}));
    }
    let mut space_map = serde_json::Map::new();
    for s in 0..spaces {
        let mut grant_groups = serde_json::Map::new();
        for k in 0..(users / spaces).max(1) {
            let g = (s * 7 + k) % (users / 10).max(1);
            grant_groups.insert(
                format!("guests-{g}"),
                serde_json::json!(["view", "comment"]),
            );
        }
        space_map.insert(
            format!("S{s}"),
            serde_json::json!({"guests": {"groups": grant_groups}}),
        );
    }
    serde_json::json!({"groups": groups, "users": user_map, "spaces": space_map}).to_string()
}

fn snapshot(dir: &Path, users: usize, spaces: usize) -> (Config, Snapshot) {
    let root = env!("CARGO_MANIFEST_DIR");
    std::fs::write(dir.join("data.json"), data(users, spaces)).expect("data");
    std::fs::write(
        dir.join("secret"),
        "bench-secret-0123456789abcdef0123456789",
    )
    .expect("secret");
    std::fs::write(dir.join("jwks.json"), signing_keys().jwks.to_string()).expect("jwks");
    let toml = format!(
        "[upstream]\nurl = \"http://127.0.0.1:9\"\n[identity]\nhs256_secret_file = \"secret\"\njwks_file = \"jwks.json\"\n\
         [policy]\ndir = \"{root}/policies\"\ndata = \"data.json\"\n[routes]\nprofile = \"{root}/config/routes/confluence.toml\"\n"
    );
    let path = dir.join("guestgate.toml");
    std::fs::write(&path, toml).expect("config");
    let config = Config::load(&path).expect("valid config");
    let snapshot = Snapshot::build(&config).expect("valid snapshot");
    (config, snapshot)
}

fn bench_classify(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, snap) = snapshot(dir.path(), 100, 10);
    c.bench_function("canonicalize", |b| {
        b.iter(|| {
            canonical::canonicalize("/display/ENG/..;/ENG/Release+plan;jsessionid=1").expect("ok")
        })
    });
    let req = http::Request::get("/pages/viewpage.action?pageId=12345&focusedCommentId=7")
        .header("host", "wiki")
        .body(())
        .expect("request")
        .into_parts()
        .0;
    c.bench_function("accept+classify (63-rule Confluence profile)", |b| {
        b.iter(|| {
            let accepted = accept::accept(
                &req,
                &config.server,
                &config.upstream.base_path,
                &snap.routes,
            )
            .expect("accepted");
            classify::classify(&snap.routes, &accepted, true)
        })
    });
}

/// An RS256 (2048-bit) and an ES256 (P-256) signing key, and the JWKS that publishes them.
struct SigningKeys {
    rs256: jsonwebtoken::EncodingKey,
    es256: jsonwebtoken::EncodingKey,
    jwks: serde_json::Value,
}

fn signing_keys() -> &'static SigningKeys {
    static KEYS: std::sync::OnceLock<SigningKeys> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        let pem = |alg| {
            rcgen::KeyPair::generate_for(alg)
                .expect("key")
                .serialize_pem()
        };
        let rs256 =
            jsonwebtoken::EncodingKey::from_rsa_pem(pem(&rcgen::PKCS_RSA_SHA256).as_bytes())
                .expect("rsa pem");
        let es256 =
            jsonwebtoken::EncodingKey::from_ec_pem(pem(&rcgen::PKCS_ECDSA_P256_SHA256).as_bytes())
                .expect("ec pem");
        let jwk = |key: &jsonwebtoken::EncodingKey, alg, kid: &str| {
            let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(key, alg).expect("jwk");
            jwk.common.key_id = Some(kid.to_string());
            serde_json::to_value(jwk).expect("json")
        };
        let jwks = serde_json::json!({"keys": [
            jwk(&rs256, jsonwebtoken::Algorithm::RS256, "rs"),
            jwk(&es256, jsonwebtoken::Algorithm::ES256, "es"),
        ]});
        SigningKeys { rs256, es256, jwks }
    })
}

fn bench_tokens(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_config, snap) = snapshot(dir.path(), 100, 10);
    let now = guestgate::identity::unix_now();
    let claims = serde_json::json!({"sub": "user1", "preferred_username": "user1", "groups": ["guests-1"], "exp": now + 3600});
    let keys = signing_keys();
    let hs256 = jsonwebtoken::EncodingKey::from_secret(b"bench-secret-0123456789abcdef0123456789");
    let algorithms = [
        ("HS256", jsonwebtoken::Algorithm::HS256, None, &hs256),
        (
            "RS256",
            jsonwebtoken::Algorithm::RS256,
            Some("rs"),
            &keys.rs256,
        ),
        (
            "ES256",
            jsonwebtoken::Algorithm::ES256,
            Some("es"),
            &keys.es256,
        ),
    ];
    for (name, alg, kid, key) in algorithms {
        let mut header = jsonwebtoken::Header::new(alg);
        header.kid = kid.map(str::to_string);
        let token = jsonwebtoken::encode(&header, &claims, key).expect("token");
        snap.verifier.verify(&token).expect("valid");
        c.bench_function(&format!("verify {name} (cached)"), |b| {
            b.iter(|| snap.verifier.verify(&token).expect("valid"))
        });
        c.bench_function(
            &format!("verify {name} (uncached: a fresh token each time)"),
            |b| {
                b.iter_batched(
                    || {
                        let mut c = claims.clone();
                        c["jti"] = serde_json::json!(rand_id());
                        jsonwebtoken::encode(&header, &c, key).expect("token")
                    },
                    |t| snap.verifier.verify(&t).expect("valid"),
                    BatchSize::SmallInput,
                )
            },
        );
    }
}

fn rand_id() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn bench_decisions(c: &mut Criterion) {
    for (users, spaces) in [(1_000, 100), (100_000, 10_000)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (config, snap) = snapshot(dir.path(), users, spaces);
        let req = http::Request::get("/display/S7/Home")
            .header("host", "wiki")
            .body(())
            .expect("request")
            .into_parts()
            .0;
        let accepted = accept::accept(
            &req,
            &config.server,
            &config.upstream.base_path,
            &snap.routes,
        )
        .expect("accepted");
        let route = classify::classify(&snap.routes, &accepted, true);
        let caller = |name: &str| {
            Caller::Authenticated(Arc::new(Identity {
                name: Arc::from(name),
                token_groups: Vec::new(),
                claims: regorus::Value::new_object(),
                token_hash: [0; 32],
                expires_at: u64::MAX,
            }))
        };
        // user7's groups hold no grant on S7 (denied: space_not_granted); user49's do
        // (allowed: guest_space_permission). Both walk the guest branch to its end.
        for (name, outcome) in [("user7", "denied"), ("user49", "allowed")] {
            let guest = caller(name);
            let decide_once = || {
                let p = decide::principal(&snap, &route, &guest, config.identity.anonymous)
                    .expect("principal");
                let decided = decide::decide(&snap, &accepted, &route, p, false).expect("decided");
                assert_eq!(decided.decision.allow, outcome == "allowed");
                decided
            };
            decide_once();
            c.bench_function(
                &format!("decision cached, guest {outcome} ({users} users)"),
                |b| b.iter(decide_once),
            );
            // The whole I/O-free line as `handle` and `guestgate eval` run it: accept →
            // classify → principal → decide, the decision cached.
            c.bench_function(
                &format!("judge (accept to decide), cached, guest {outcome} ({users} users)"),
                |b| {
                    b.iter(|| {
                        let judged = guestgate::pipeline::judge(&snap, &config, &req, &guest, None)
                            .unwrap_or_else(|_| panic!("judged"));
                        assert_eq!(judged.decided.decision.allow, outcome == "allowed");
                    })
                },
            );
            // The policy alone: what regorus costs, without cache key, cache, facts or input
            // building.
            let input = {
                let p = decide::principal(&snap, &route, &guest, config.identity.anonymous)
                    .expect("principal");
                let facts = snap.directory.facts(
                    p.user.as_deref(),
                    &p.groups,
                    route.space.as_deref(),
                    time::OffsetDateTime::now_utc(),
                );
                guestgate::policy::input::build(
                    accepted.method.as_str(),
                    &accepted.path,
                    &accepted.params,
                    &route,
                    &guestgate::policy::input::UserInput {
                        name: p.user.as_deref(),
                        groups: &p.groups,
                        authenticated: true,
                        claims: &regorus::Value::new_object(),
                        facts: &facts,
                    },
                )
            };
            c.bench_function(
                &format!(
                    "policy evaluation only, guest {outcome} ({users} users, {spaces} spaces)"
                ),
                |b| b.iter(|| snap.policy.evaluate(input.clone()).expect("evaluated")),
            );
            c.bench_function(
                &format!("decision uncached, guest {outcome} ({users} users, {spaces} spaces)"),
                |b| {
                    b.iter(|| {
                        snap.decisions.invalidate_all();
                        decide_once()
                    })
                },
            );
        }
    }
}

criterion_group!(benches, bench_classify, bench_tokens, bench_decisions);
criterion_main!(benches);
