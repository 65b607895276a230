//! The token parser and verifier (`Verifier::verify`) with an HS256 key configured. Half the
//! inputs are taken as raw token text; the other half are split into a JOSE header and a
//! claims set, base64url-encoded and correctly signed, so the fuzzer reaches the header
//! checks and claim handling behind the signature. Nothing may panic, and a token is only
//! ever accepted with a user name.
#![no_main]

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use guestgate::config::Config;
use guestgate::pipeline::identify::Verifier;
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"fuzzing-secret-0123456789abcdef-0123456789";

fn verifier() -> &'static Verifier {
    static VERIFIER: OnceLock<Verifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("guestgate-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("secret"), SECRET).expect("secret file");
        let config = Config::from_toml(
            &dir.join("guestgate.toml"),
            "[upstream]\nurl = \"http://127.0.0.1:1\"\n\
             [identity]\nhs256_secret_file = \"secret\"\nleeway_secs = 0\n",
        )
        .expect("config");
        Verifier::load(&config.identity).expect("verifier")
    })
}

fn sign(header: &[u8], claims: &[u8]) -> String {
    let signing_input = format!("{}.{}", B64.encode(header), B64.encode(claims));
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, SECRET);
    let tag = aws_lc_rs::hmac::sign(&key, signing_input.as_bytes());
    format!("{signing_input}.{}", B64.encode(tag.as_ref()))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let token = if mode & 1 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        // Header and claims separated by the first 0xff byte (never in UTF-8 JSON).
        let (header, claims) = match rest.iter().position(|&b| b == 0xff) {
            Some(cut) => (&rest[..cut], &rest[cut + 1..]),
            None => (&br#"{"alg":"HS256","typ":"JWT"}"#[..], rest),
        };
        sign(header, claims)
    };
    if let Ok(identity) = verifier().verify(&token) {
        assert!(!identity.name.is_empty());
        // An accepted token verifies the same way again (through the cache).
        assert!(verifier().verify(&token).is_ok());
        // ... and any change to its signature is refused.
        let mut forged = token.clone();
        let last = forged.pop().unwrap_or('A');
        forged.push(if last == 'A' { 'B' } else { 'A' });
        if B64.decode(forged.rsplit('.').next().unwrap_or("")).is_ok() {
            assert!(verifier().verify(&forged).is_err(), "{forged}");
        }
    }
});
