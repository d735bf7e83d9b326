//! The issuer's signing keys: loaded from a PEM file or generated at start, published as a JWKS
//! (RFC 7517) under their RFC 7638 thumbprints as `kid`.

use std::fmt;

use jsonwebtoken::jwk::{Jwk, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey, Header, Validation};
use serde::Serialize;
use serde_json::{Value, json};

/// Algorithms the issuer can sign with. EdDSA is left out: jsonwebtoken cannot derive its JWK.
pub const SIGNING_ALGORITHMS: [Algorithm; 8] = [
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// RFC 9068 §2.1: the `typ` of a JWT access token.
pub const ACCESS_TOKEN_TYPE: &str = "at+jwt";

/// A private key with its algorithm and public JWK. `Debug` shows only the `kid`.
#[derive(Clone)]
pub struct SigningKey {
    alg: Algorithm,
    kid: String,
    encoding: EncodingKey,
    jwk: Jwk,
}

/// Keys are the same when their public halves are (a private key has one public key).
impl PartialEq for SigningKey {
    fn eq(&self, other: &Self) -> bool {
        self.alg == other.alg && self.kid == other.kid && self.jwk == other.jwk
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({:?}, kid {})", self.alg, self.kid)
    }
}

impl SigningKey {
    /// Loads a PEM private key: PKCS#8 for EC (P-256, P-384), PKCS#1 or PKCS#8 for RSA. Without
    /// `alg`, ES256/ES384 is chosen by curve and RS256 for RSA. The error never quotes the file.
    pub fn from_pem(pem: &[u8], alg: Option<Algorithm>) -> Result<Self, String> {
        let text = std::str::from_utf8(pem).map_err(|_| "is not a PEM file".to_owned())?;
        if !text.contains("-----BEGIN") {
            return Err("is not a PEM file".into());
        }
        let encoding = EncodingKey::from_ec_pem(pem)
            .or_else(|_| EncodingKey::from_rsa_pem(pem))
            .map_err(|_| {
                "is not a PKCS#8 EC or RSA private key (e.g. `openssl genpkey -algorithm EC \
                 -pkeyopt ec_paramgen_curve:P-256`)"
                    .to_owned()
            })?;
        let candidates: Vec<Algorithm> = match (alg, encoding.family()) {
            (Some(a), _) => vec![a],
            (None, AlgorithmFamily::Ec) => vec![Algorithm::ES256, Algorithm::ES384],
            (None, _) => vec![Algorithm::RS256],
        };
        candidates
            .into_iter()
            .find_map(|a| Self::with_algorithm(encoding.clone(), a).ok())
            .ok_or_else(|| match alg {
                Some(a) => format!("the key cannot sign {a:?}"),
                None => "the key's curve is not supported (P-256 or P-384)".into(),
            })
    }

    /// A fresh key: ES256 (P-256) or RS256 (2048-bit RSA).
    pub fn generate(alg: Algorithm) -> Result<Self, String> {
        use p256::pkcs8::EncodePrivateKey;
        use rsa::pkcs1::EncodeRsaPrivateKey;
        let encoding = match alg {
            Algorithm::ES256 => {
                let key = p256::SecretKey::random(&mut rand_core::OsRng);
                let der = key.to_pkcs8_der().map_err(|e| e.to_string())?;
                EncodingKey::from_ec_der(der.as_bytes())
            }
            Algorithm::RS256 => {
                let key = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048)
                    .map_err(|e| e.to_string())?;
                let der = key.to_pkcs1_der().map_err(|e| e.to_string())?;
                EncodingKey::from_rsa_der(der.as_bytes())
            }
            other => {
                return Err(format!(
                    "cannot generate {other:?} keys; generated keys are ES256 or RS256 (give a file for others)"
                ));
            }
        };
        Self::with_algorithm(encoding, alg)
    }

    /// Derives the public JWK and proves the pair works by signing and verifying once.
    fn with_algorithm(encoding: EncodingKey, alg: Algorithm) -> Result<Self, String> {
        if !SIGNING_ALGORITHMS.contains(&alg) || alg.family() != encoding.family() {
            return Err(format!("the key cannot sign {alg:?}"));
        }
        let mut jwk = Jwk::from_encoding_key(&encoding, alg).map_err(|e| e.to_string())?;
        let kid = jwk.thumbprint(ThumbprintHash::SHA256);
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        let key = Self {
            alg,
            kid,
            encoding,
            jwk,
        };
        let probe = key
            .sign(&json!({"probe": true}))
            .map_err(|e| e.to_string())?;
        let decoding = DecodingKey::from_jwk(&key.jwk).map_err(|e| e.to_string())?;
        let mut v = Validation::new(alg);
        v.required_spec_claims.clear();
        v.validate_exp = false;
        v.validate_aud = false;
        jsonwebtoken::decode::<Value>(&probe, &decoding, &v)
            .map_err(|_| format!("the key cannot sign {alg:?}"))?;
        Ok(key)
    }

    /// Signs `claims` as an RFC 9068 access token (`typ: at+jwt`, this key's `kid`).
    pub fn sign(&self, claims: &impl Serialize) -> jsonwebtoken::errors::Result<String> {
        let mut header = Header::new(self.alg);
        header.typ = Some(ACCESS_TOKEN_TYPE.into());
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding)
    }

    /// The signing algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// The key id: the RFC 7638 SHA-256 thumbprint of the public key.
    pub fn kid(&self) -> &str {
        &self.kid
    }
}

/// The JWKS document publishing `keys` (public parts only).
pub fn jwks<'a>(keys: impl IntoIterator<Item = &'a SigningKey>) -> Value {
    let keys: Vec<&Jwk> = keys.into_iter().map(|k| &k.jwk).collect();
    json!({ "keys": keys })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_sign_tokens_their_jwks_verifies() {
        for alg in [Algorithm::ES256, Algorithm::RS256] {
            let key = SigningKey::generate(alg).unwrap();
            let token = key.sign(&json!({"sub": "x", "exp": u64::MAX / 2})).unwrap();
            let header = jsonwebtoken::decode_header(&token).unwrap();
            assert_eq!(header.typ.as_deref(), Some("at+jwt"));
            assert_eq!(header.kid.as_deref(), Some(key.kid()));
            let doc = jwks([&key]);
            let jwk: Jwk = serde_json::from_value(doc["keys"][0].clone()).unwrap();
            assert!(jwk.common.key_id.as_deref() == Some(key.kid()));
            let text = doc.to_string();
            assert!(
                !text.contains("\"d\""),
                "a JWKS never carries private parts"
            );
            let mut v = Validation::new(alg);
            v.validate_aud = false;
            jsonwebtoken::decode::<Value>(&token, &DecodingKey::from_jwk(&jwk).unwrap(), &v)
                .unwrap();
        }
    }

    #[test]
    fn pem_keys_pick_their_algorithm_and_refuse_misfits() {
        let ec = include_bytes!("../../../chaos/kit/src/idp/idp-test-key-ec.pem");
        let key = SigningKey::from_pem(ec, None).unwrap();
        assert_eq!(key.algorithm(), Algorithm::ES256);
        assert_eq!(
            SigningKey::from_pem(ec, Some(Algorithm::RS256)).unwrap_err(),
            "the key cannot sign RS256"
        );
        let rsa = include_bytes!("../../../chaos/kit/src/idp/idp-test-key.pem");
        assert_eq!(
            SigningKey::from_pem(rsa, Some(Algorithm::PS256))
                .unwrap()
                .algorithm(),
            Algorithm::PS256
        );
        assert_eq!(
            SigningKey::from_pem(b"hello", None).unwrap_err(),
            "is not a PEM file"
        );
        // Same key, same kid: every node sharing the file publishes the same JWKS.
        assert_eq!(SigningKey::from_pem(ec, None).unwrap().kid(), key.kid());
    }
}
