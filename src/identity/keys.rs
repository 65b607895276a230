//! Verification keys: one key pinned to one algorithm, and the public keys of a JWKS
//! document. Shared by the token verifier and the JWKS fetcher.

use std::str::FromStr;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};

/// One verification key, pinned to one algorithm.
#[derive(Clone)]
pub struct VerifyKey {
    pub(crate) kid: Option<String>,
    pub(crate) alg: Algorithm,
    pub(crate) key: DecodingKey,
}

/// A problem loading keys.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(pub String);

/// Parses a JWKS document: the usable public keys, and a problem for each unusable one.
pub(crate) fn keys_from_jwks(text: &str, origin: &str) -> (Vec<VerifyKey>, Vec<KeyError>) {
    let set = match serde_json::from_str::<JwkSet>(text) {
        Ok(set) => set,
        Err(e) => return (Vec::new(), vec![KeyError(format!("{origin}: {e}"))]),
    };
    let mut keys = Vec::new();
    let mut errors = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let at = format!("{origin}: key #{}", i + 1);
        let Some(alg) = jwk_algorithm(jwk) else {
            errors.push(KeyError(format!("{at}: no supported algorithm")));
            continue;
        };
        if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
            errors.push(KeyError(format!(
                "{at}: symmetric keys do not belong in a JWKS; use hs256_secret_env"
            )));
            continue;
        }
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => keys.push(VerifyKey {
                kid: jwk.common.key_id.clone(),
                alg,
                key,
            }),
            Err(e) => errors.push(KeyError(format!("{at}: {e}"))),
        }
    }
    (keys, errors)
}

fn jwk_algorithm(jwk: &jsonwebtoken::jwk::Jwk) -> Option<Algorithm> {
    if let Some(alg) = jwk.common.key_algorithm {
        return Algorithm::from_str(&alg.to_string()).ok();
    }
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => Some(Algorithm::ES256),
            EllipticCurve::P384 => Some(Algorithm::ES384),
            _ => None,
        },
        AlgorithmParameters::OctetKeyPair(_) => Some(Algorithm::EdDSA),
        _ => None,
    }
}
