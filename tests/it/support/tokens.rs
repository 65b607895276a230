//! Token minting: HS256 tokens with the test secret, and EC / Ed25519 keys for JWKS tests.

use super::*;

/// An asymmetric signing key with its public JWK.
pub struct TestKey {
    pub enc: jsonwebtoken::EncodingKey,
    pub jwk: serde_json::Value,
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A fresh P-256 key for ES256, named `kid`.
pub fn ec_key(kid: &str) -> TestKey {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = key.public_key_raw();
    assert_eq!(raw.len(), 65);
    let pem = key.serialize_pem();
    TestKey {
        enc: jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
        jwk: serde_json::json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
            "x": b64url(&raw[1..33]), "y": b64url(&raw[33..65]),
        }),
    }
}

/// A fresh Ed25519 key for EdDSA, named `kid`.
pub fn ed_key(kid: &str) -> TestKey {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let pem = key.serialize_pem();
    TestKey {
        enc: jsonwebtoken::EncodingKey::from_ed_pem(pem.as_bytes()).unwrap(),
        jwk: serde_json::json!({
            "kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": "EdDSA",
            "x": b64url(key.public_key_raw()),
        }),
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims of a valid token for `user` with `groups`.
pub fn claims(user: &str, groups: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "sub": format!("id-{user}"),
        "preferred_username": user,
        "groups": groups,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now(),
        "exp": now() + 600,
    })
}

pub fn sign_hs256(claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

pub fn token(user: &str, groups: &[&str]) -> String {
    sign_hs256(&claims(user, groups))
}

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}
