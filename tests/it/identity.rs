//! Identity: token sources, signatures, algorithm pinning, claim checks, the 401 answer.
#![allow(clippy::unwrap_used)]

use crate::support::*;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use http::StatusCode;

async fn gateway_with(identity_extra: &str) -> (Upstream, TestGateway) {
    let up = start_upstream().await;
    let mut c = TestConfig::new(&up.url());
    c.identity_extra = identity_extra.to_string();
    let gw = start_gateway(c).await;
    (up, gw)
}

async fn status_with_auth(
    gw: &TestGateway,
    auth: &str,
) -> (StatusCode, serde_json::Value, Option<String>) {
    let a = get(&gw.url("/display/ENG/Home"), &[("authorization", auth)]).await;
    let www = a.header("www-authenticate").map(str::to_string);
    (a.status, a.json(), www)
}

#[tokio::test]
async fn missing_and_invalid_tokens_get_401_with_the_reason() {
    let (up, gw) = gateway_with("").await;

    let a = get(&gw.url("/display/ENG/Home"), &[]).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        a.json(),
        serde_json::json!({"error": "unauthorized", "reason": "missing_token"})
    );
    assert_eq!(
        a.header("www-authenticate"),
        Some("Bearer realm=\"guestgate\"")
    );

    let mut expired = claims("alice", &[]);
    expired["exp"] = serde_json::json!(now() - 10);
    let mut future = claims("alice", &[]);
    future["nbf"] = serde_json::json!(now() + 3600);
    let mut wrong_iss = claims("alice", &[]);
    wrong_iss["iss"] = serde_json::json!("https://evil.test");
    let mut wrong_aud = claims("alice", &[]);
    wrong_aud["aud"] = serde_json::json!("other-app");
    // An ID token (it has a nonce), signed and addressed right: still not a credential.
    let mut id_token = claims("alice", &[]);
    id_token["nonce"] = serde_json::json!("n-0S6_WzA2Mj");
    let mut no_exp = claims("alice", &[]);
    no_exp.as_object_mut().unwrap().remove("exp");
    let mut no_user = claims("alice", &[]);
    no_user
        .as_object_mut()
        .unwrap()
        .remove("preferred_username");
    no_user.as_object_mut().unwrap().remove("sub");
    let bad_sig = {
        let t = token("alice", &[]);
        let (head, _) = t.rsplit_once('.').unwrap();
        format!("{head}.{}", B64.encode([7u8; 32]))
    };
    let alg_none = {
        let header = B64.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = B64.encode(claims("alice", &[]).to_string());
        format!("{header}.{payload}.")
    };
    let hs512 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
        &claims("alice", &[]),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let oversized = format!("{}.{}.x", "a".repeat(10), "b".repeat(10_000));
    let with_crit = {
        let header = B64.encode(br#"{"alg":"HS256","typ":"JWT","crit":["exp-v2"],"exp-v2":1}"#);
        let t = token("alice", &[]);
        let mut parts = t.splitn(2, '.');
        let _ = parts.next();
        format!("{header}.{}", parts.next().unwrap())
    };
    let wrong_typ = {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        h.typ = Some("dpop+jwt".into());
        jsonwebtoken::encode(
            &h,
            &claims("alice", &[]),
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    let cases = [
        (sign_hs256(&expired), "token_expired"),
        (sign_hs256(&future), "token_not_yet_valid"),
        (sign_hs256(&wrong_iss), "invalid_issuer"),
        (sign_hs256(&wrong_aud), "invalid_audience"),
        (sign_hs256(&no_exp), "invalid_claims"),
        (sign_hs256(&no_user), "missing_subject"),
        (sign_hs256(&id_token), "id_token_not_accepted"),
        (bad_sig, "invalid_signature"),
        (alg_none, "unsupported_algorithm"),
        (hs512, "unsupported_algorithm"),
        ("not-a-jwt".to_string(), "malformed_token"),
        (oversized, "token_too_large"),
        (with_crit, "unsupported_critical_header"),
        (wrong_typ, "unsupported_token_type"),
    ];
    for (tok, reason) in cases {
        let (status, body, www) = status_with_auth(&gw, &bearer(&tok)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{reason}");
        assert_eq!(body["reason"], reason);
        let www = www.unwrap();
        assert!(www.contains("error=\"invalid_token\""), "{www}");
        assert!(www.contains(reason), "{www}");
    }
    assert!(
        up.forwarded().is_empty(),
        "no refused request reached the wiki"
    );
}

#[tokio::test]
async fn token_from_cookie_and_sources_in_order() {
    let (up, gw) = gateway_with("").await;
    let cookie = format!(
        "theme=dark; guestgate_token={}; other=1",
        token("gary", &[])
    );
    let a = get(&gw.url("/display/ENG/Home"), &[("cookie", &cookie)]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(up.forwarded()[0].header("x-guestgate-user"), Some("gary"));
    // Authorization comes first in the default token_sources.
    let auth = bearer(&token("alice", &[]));
    let a = get(
        &gw.url("/display/HR/Home"),
        &[("cookie", &cookie), ("authorization", &auth)],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(up.forwarded()[1].header("x-guestgate-user"), Some("alice"));
    // A Basic credential is not a token.
    let a = get(
        &gw.url("/display/HR/Home"),
        &[("authorization", "Basic YWxpY2U6c2VjcmV0")],
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn user_claim_falls_back_to_sub_and_groups_come_from_the_token() {
    let (up, gw) = gateway_with("").await;
    let mut c = claims("x", &["acme-guests"]);
    c.as_object_mut().unwrap().remove("preferred_username");
    c["sub"] = serde_json::json!("visitor-7");
    let a = get(
        &gw.url("/display/ENG/Home"),
        &[("authorization", &bearer(&sign_hs256(&c)))],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let s = &up.forwarded()[0];
    assert_eq!(s.header("x-guestgate-user"), Some("visitor-7"));
    assert_eq!(
        s.header("x-guestgate-guest"),
        Some("true"),
        "token group acme-guests makes a guest"
    );
    let a = get(
        &gw.url("/display/HR/Home"),
        &[("authorization", &bearer(&sign_hs256(&c)))],
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
}

fn sign(
    alg: jsonwebtoken::Algorithm,
    kid: Option<&str>,
    key: &jsonwebtoken::EncodingKey,
    c: &serde_json::Value,
) -> String {
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, c, key).unwrap()
}

#[tokio::test]
async fn jwks_keys_are_pinned_to_their_algorithm() {
    let up = start_upstream().await;
    let ec = ec_key("ec-1");
    let ed = ed_key("ed-1");
    let mut c = TestConfig::new(&up.url());
    c.identity_extra = "jwks_file = \"jwks.json\"".into();
    // hs256_secret_file and jwks_file together: both kinds of key are accepted.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("jwks.json"),
        serde_json::json!({"keys": [ec.jwk, ed.jwk]}).to_string(),
    )
    .unwrap();
    let path = write_config(dir.path(), &c);
    let gw = start_gateway_in(dir, &path).await;
    let (ec_enc, ed_enc) = (&ec.enc, &ed.enc);
    let good = claims("alice", &[]);

    let es = sign(jsonwebtoken::Algorithm::ES256, Some("ec-1"), ec_enc, &good);
    assert_eq!(status_with_auth(&gw, &bearer(&es)).await.0, StatusCode::OK);
    let eddsa = sign(jsonwebtoken::Algorithm::EdDSA, Some("ed-1"), ed_enc, &good);
    assert_eq!(
        status_with_auth(&gw, &bearer(&eddsa)).await.0,
        StatusCode::OK
    );
    let no_kid = sign(jsonwebtoken::Algorithm::ES256, None, ec_enc, &good);
    assert_eq!(
        status_with_auth(&gw, &bearer(&no_kid)).await.0,
        StatusCode::OK
    );

    // A kid that names the EC key, on an EdDSA token: the key decides the algorithm.
    let confused = sign(jsonwebtoken::Algorithm::EdDSA, Some("ec-1"), ed_enc, &good);
    let (status, body, _) = status_with_auth(&gw, &bearer(&confused)).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("algorithm_mismatch"))
    );
    // Classic confusion: HS256 "signed" with the public key text under the EC key's kid.
    let public_as_secret = jsonwebtoken::EncodingKey::from_secret(ec.jwk.to_string().as_bytes());
    let confused = sign(
        jsonwebtoken::Algorithm::HS256,
        Some("ec-1"),
        &public_as_secret,
        &good,
    );
    let (status, body, _) = status_with_auth(&gw, &bearer(&confused)).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("algorithm_mismatch"))
    );
    let unknown = sign(jsonwebtoken::Algorithm::ES256, Some("ec-9"), ec_enc, &good);
    let (status, body, _) = status_with_auth(&gw, &bearer(&unknown)).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unknown_key"))
    );
    // Signed by a key the gateway does not have, under a known kid.
    let other = ec_key("ec-1");
    let forged = sign(
        jsonwebtoken::Algorithm::ES256,
        Some("ec-1"),
        &other.enc,
        &good,
    );
    let (status, body, _) = status_with_auth(&gw, &bearer(&forged)).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_signature"))
    );
    assert_eq!(up.forwarded().len(), 3);
}

#[tokio::test]
async fn anonymous_policy_mode_hands_unauthenticated_requests_to_the_policy() {
    let (up, gw) = gateway_with("anonymous = \"policy\"").await;
    let a = get(&gw.url("/display/ENG/Home"), &[]).await;
    // The shipped policy answers unauthenticated users with its own 401.
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.json()["reason"], "unauthenticated");
    assert!(up.forwarded().is_empty());
}
