//! Gateway-sealed cookie values: AES-256-GCM (aws-lc-rs, the provider rustls already uses)
//! with a random 96-bit nonce, and the cookie's purpose as associated data, so a value sealed
//! as one cookie (a sign-in state) never opens as another (a session).
//!
//! Keys come from one secret holding one or more base64 keys of 32 bytes, separated by
//! commas or white space. The first seals; every one opens — to rotate, put a new key first,
//! and drop the old one once the sessions it sealed have ended.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};

/// Format version, first byte of every sealed value.
const VERSION: u8 = 1;

pub struct Sealer {
    keys: Vec<LessSafeKey>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl Sealer {
    /// Parses the key list. Errors never echo key material.
    pub fn from_text(text: &str) -> Result<Sealer, String> {
        let mut keys = Vec::new();
        for (i, word) in text
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|w| !w.is_empty())
            .enumerate()
        {
            let bytes = STANDARD
                .decode(word)
                .or_else(|_| URL_SAFE.decode(word))
                .or_else(|_| URL_SAFE_NO_PAD.decode(word))
                .map_err(|_| format!("session key #{} is not base64", i + 1))?;
            if bytes.len() != 32 {
                return Err(format!(
                    "session key #{} is {} bytes; it must be 32 (e.g. `openssl rand -base64 32`)",
                    i + 1,
                    bytes.len()
                ));
            }
            let key = UnboundKey::new(&AES_256_GCM, &bytes)
                .map_err(|_| format!("session key #{} is unusable", i + 1))?;
            keys.push(LessSafeKey::new(key));
        }
        if keys.is_empty() {
            return Err("no session key given".into());
        }
        Ok(Sealer { keys })
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Seals `plaintext` for `purpose` with the first key: base64url of
    /// `version ‖ nonce ‖ ciphertext ‖ tag`.
    pub fn seal(&self, purpose: &str, plaintext: &[u8]) -> Result<String, String> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| "no randomness".to_string())?;
        let mut buf = plaintext.to_vec();
        self.keys[0]
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(purpose.as_bytes()),
                &mut buf,
            )
            .map_err(|_| "sealing failed".to_string())?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + buf.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(URL_SAFE_NO_PAD.encode(out))
    }

    /// Opens a value sealed for `purpose` by any of the keys. `None` for anything else:
    /// tampered, truncated, sealed for another purpose, or by a key no longer configured.
    pub fn open(&self, purpose: &str, sealed: &str) -> Option<Vec<u8>> {
        let raw = URL_SAFE_NO_PAD.decode(sealed).ok()?;
        let (&version, rest) = raw.split_first()?;
        if version != VERSION || rest.len() < NONCE_LEN {
            return None;
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
        self.keys.iter().find_map(|key| {
            let mut buf = ciphertext.to_vec();
            key.open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(purpose.as_bytes()),
                &mut buf,
            )
            .ok()
            .map(|plain| plain.to_vec())
        })
    }
}

/// `n` random bytes, base64url: state, nonce and PKCE verifier values.
pub fn random_token(n: usize) -> Result<String, String> {
    let mut bytes = vec![0u8; n];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| "no randomness".to_string())?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key(b: u8) -> String {
        STANDARD.encode([b; 32])
    }

    #[test]
    fn seals_and_opens_for_one_purpose_only() {
        let s = Sealer::from_text(&key(1)).unwrap();
        let sealed = s.seal("session", b"hello").unwrap();
        assert_eq!(s.open("session", &sealed).unwrap(), b"hello");
        assert!(s.open("state", &sealed).is_none(), "purpose is bound");
        assert_ne!(sealed, s.seal("session", b"hello").unwrap(), "fresh nonce");
    }

    #[test]
    fn tampering_is_detected() {
        let s = Sealer::from_text(&key(1)).unwrap();
        let sealed = s.seal("session", b"hello world").unwrap();
        let mut raw = URL_SAFE_NO_PAD.decode(&sealed).unwrap();
        for i in 0..raw.len() {
            raw[i] ^= 1;
            assert!(s.open("session", &URL_SAFE_NO_PAD.encode(&raw)).is_none());
            raw[i] ^= 1;
        }
        assert!(s.open("session", &sealed[..sealed.len() - 2]).is_none());
        assert!(s.open("session", "").is_none());
        assert!(s.open("session", "%%%").is_none());
    }

    #[test]
    fn rotation_first_key_seals_all_keys_open() {
        let old = Sealer::from_text(&key(1)).unwrap();
        let sealed_old = old.seal("session", b"a").unwrap();
        let rotated = Sealer::from_text(&format!("{}, {}", key(2), key(1))).unwrap();
        assert_eq!(rotated.open("session", &sealed_old).unwrap(), b"a");
        let sealed_new = rotated.seal("session", b"b").unwrap();
        assert!(old.open("session", &sealed_new).is_none(), "new key seals");
        let retired = Sealer::from_text(&key(2)).unwrap();
        assert!(retired.open("session", &sealed_old).is_none());
    }

    #[test]
    fn bad_key_lists_are_refused_without_echoing_them() {
        assert!(Sealer::from_text("").is_err());
        let e = Sealer::from_text("c2hvcnQ=").unwrap_err();
        assert!(e.contains("5 bytes") && !e.contains("c2hvcnQ"), "{e}");
        assert!(Sealer::from_text("not base64!").is_err());
        assert!(Sealer::from_text(&URL_SAFE_NO_PAD.encode([3u8; 32])).is_ok());
    }
}
