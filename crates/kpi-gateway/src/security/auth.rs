//! Reader authentication: verifying a JWT and turning its claims into a [`Grant`].
//!
//! Pure functions over strings and headers, no I/O after the keys are loaded,
//! so the fuzz targets and property tests can drive them directly.
//!
//! Claims the gateway reads (besides `exp`, `nbf`, `aud`, `iss`):
//!
//! ```json
//! {"sub": "alice", "exp": 1767225600, "kpis": ["sales_*", "hr_payroll"], "admin": false}
//! ```
//!
//! `kpis` lists exact KPI codes and prefixes ending in one `*` (see
//! [`kpi_core::access`]); an entry that is neither grants nothing. `admin:
//! true` allows the `/api/admin/*` endpoints (it does not by itself grant
//! KPIs). Every accepted token must carry `exp`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::http::HeaderMap;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use kpi_core::{KpiCode, KpiGrants};
use serde::Deserialize;

/// Longest token looked at; anything longer is refused before decoding, so
/// a hostile client cannot make us base64-decode megabytes.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The WebSocket subprotocol a browser offers next to `bearer.<token>`; the
/// gateway echoes it back (a browser refuses a handshake that selects none).
pub const SUBPROTOCOL: &str = "kpistream";
/// Prefix of the subprotocol entry that carries a token.
pub const BEARER_SUBPROTOCOL_PREFIX: &str = "bearer.";

/// Where the verification keys come from; all optional, any combination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSettings {
    /// File holding the raw HS256 shared secret (trailing newline ignored).
    pub hs256_secret_file: Option<PathBuf>,
    /// PEM public key for RS256.
    pub rsa_public_key_file: Option<PathBuf>,
    /// PEM public key for EdDSA (Ed25519).
    pub ed25519_public_key_file: Option<PathBuf>,
    /// A JWK set; a token's `kid` selects the key.
    pub jwks_file: Option<PathBuf>,
    /// When set, tokens must carry this `aud`.
    pub audience: Option<String>,
    /// When set, tokens must carry this `iss`.
    pub issuer: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
}

impl Default for JwtSettings {
    fn default() -> Self {
        JwtSettings {
            hs256_secret_file: None,
            rsa_public_key_file: None,
            ed25519_public_key_file: None,
            jwks_file: None,
            audience: None,
            issuer: None,
            leeway: Duration::from_secs(5),
        }
    }
}

impl JwtSettings {
    /// True when at least one key source is configured.
    pub fn any_key(&self) -> bool {
        self.hs256_secret_file.is_some()
            || self.rsa_public_key_file.is_some()
            || self.ed25519_public_key_file.is_some()
            || self.jwks_file.is_some()
    }
}

/// A key file that cannot be used; reported at startup.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {problem}")]
pub struct KeyError {
    what: &'static str,
    path: String,
    problem: String,
}

/// Why a presented token was not accepted. The texts go to clients; none
/// contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("a token is required: send `Authorization: Bearer <jwt>`, `?token=<jwt>` or the `bearer.<jwt>` WebSocket subprotocol")]
    Missing,
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token's algorithm is not accepted by this gateway")]
    WrongAlgorithm,
    #[error("the token's key id is not known")]
    UnknownKey,
    #[error("the token is for another audience")]
    WrongAudience,
    #[error("the token is from another issuer")]
    WrongIssuer,
    #[error("the token's claims are invalid: {0}")]
    BadClaims(String),
    #[error("tokens are not accepted: no verification key is configured")]
    NotConfigured,
}

impl AuthError {
    /// A short label for metrics and the audit log.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "token_missing",
            AuthError::Malformed => "token_malformed",
            AuthError::Expired => "token_expired",
            AuthError::NotYetValid => "token_not_yet_valid",
            AuthError::BadSignature => "bad_signature",
            AuthError::WrongAlgorithm => "wrong_algorithm",
            AuthError::UnknownKey => "unknown_key",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::WrongIssuer => "wrong_issuer",
            AuthError::BadClaims(_) => "bad_claims",
            AuthError::NotConfigured => "not_configured",
        }
    }
}

/// What a verified token allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The `sub` claim, for the audit log.
    pub subject: Option<String>,
    pub kpis: KpiGrants,
    pub admin: bool,
    /// `exp`, seconds since the Unix epoch.
    pub expires_at: u64,
}

impl Grant {
    pub fn may_read(&self, code: &KpiCode) -> bool {
        self.kpis.allows(code)
    }
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    // Optional here so a missing `exp` is reported as such by the
    // validation (which requires it) rather than as a shape error.
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    kpis: Vec<String>,
    #[serde(default)]
    admin: bool,
}

struct Key {
    kid: Option<String>,
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

/// Verifies tokens against the configured keys. Cheap to share behind an `Arc`.
pub struct Verifier {
    keys: Vec<Key>,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl Verifier {
    /// Loads every configured key; `None` when no key is configured.
    pub fn from_settings(s: &JwtSettings) -> Result<Option<Verifier>, KeyError> {
        if !s.any_key() {
            return Ok(None);
        }
        let mut keys = Vec::new();
        if let Some(path) = &s.hs256_secret_file {
            let raw = read(path, "HS256 secret file")?;
            let secret = trim_newline(&raw);
            if secret.len() < 32 {
                return Err(key_error(
                    "HS256 secret file",
                    path,
                    "the secret must be at least 32 bytes",
                ));
            }
            keys.push(Key {
                kid: None,
                key: DecodingKey::from_secret(secret),
                algorithms: vec![Algorithm::HS256],
            });
        }
        if let Some(path) = &s.rsa_public_key_file {
            let raw = read(path, "RSA public key file")?;
            let key = DecodingKey::from_rsa_pem(&raw)
                .map_err(|e| key_error("RSA public key file", path, e))?;
            keys.push(Key {
                kid: None,
                key,
                algorithms: vec![Algorithm::RS256],
            });
        }
        if let Some(path) = &s.ed25519_public_key_file {
            let raw = read(path, "Ed25519 public key file")?;
            let key = DecodingKey::from_ed_pem(&raw)
                .map_err(|e| key_error("Ed25519 public key file", path, e))?;
            keys.push(Key {
                kid: None,
                key,
                algorithms: vec![Algorithm::EdDSA],
            });
        }
        if let Some(path) = &s.jwks_file {
            let raw = read(path, "JWKS file")?;
            let set: JwkSet =
                serde_json::from_slice(&raw).map_err(|e| key_error("JWKS file", path, e))?;
            for jwk in &set.keys {
                let Some(kid) = jwk.common.key_id.clone() else {
                    return Err(key_error("JWKS file", path, "every key needs a `kid`"));
                };
                let algorithms = jwk_algorithms(jwk.common.key_algorithm, &jwk.algorithm)
                    .ok_or_else(|| {
                        key_error(
                            "JWKS file",
                            path,
                            format!("key {kid:?}: unsupported key type"),
                        )
                    })?;
                let key = DecodingKey::from_jwk(jwk)
                    .map_err(|e| key_error("JWKS file", path, format!("key {kid:?}: {e}")))?;
                keys.push(Key {
                    kid: Some(kid),
                    key,
                    algorithms,
                });
            }
        }
        if keys.is_empty() {
            return Err(KeyError {
                what: "JWT keys",
                path: String::new(),
                problem: "the configured key files hold no key".into(),
            });
        }
        Ok(Some(Verifier::new_inner(keys, s)))
    }

    /// A verifier with one HS256 secret and default checks (tests, fuzzing).
    pub fn hs256(secret: &[u8]) -> Verifier {
        let keys = vec![Key {
            kid: None,
            key: DecodingKey::from_secret(secret),
            algorithms: vec![Algorithm::HS256],
        }];
        Verifier::new_inner(keys, &JwtSettings::default())
    }

    fn new_inner(keys: Vec<Key>, s: &JwtSettings) -> Verifier {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = s.leeway.as_secs();
        validation.validate_nbf = true;
        validation.validate_exp = true;
        let mut required = vec!["exp"];
        match &s.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            // With no audience configured, a token naming one is still
            // accepted: the operator did not ask for the check.
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &s.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        Verifier { keys, validation }
    }

    /// Verifies `token` (signature, algorithm, `exp`, `nbf`, `aud`, `iss`) and
    /// returns what it grants. Never panics, whatever the input.
    pub fn verify(&self, token: &str) -> Result<Grant, AuthError> {
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Malformed);
        }
        // Unknown algorithms, `none` included, fail here: jsonwebtoken has no
        // `none` algorithm at all.
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        let by_kid: Vec<&Key> = match &header.kid {
            Some(kid) => self
                .keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid.as_str()))
                .collect(),
            None => Vec::new(),
        };
        let candidates: Vec<&Key> = if !by_kid.is_empty() {
            by_kid
        } else {
            // No kid, or one we do not know: only keys that are not
            // JWKS-selected are tried.
            let plain: Vec<&Key> = self.keys.iter().filter(|k| k.kid.is_none()).collect();
            if plain.is_empty() {
                return Err(if header.kid.is_some() {
                    AuthError::UnknownKey
                } else {
                    AuthError::WrongAlgorithm
                });
            }
            plain
        };
        // The algorithm must be one the key was configured for: this is what
        // stops an HS256 token "signed" with the RSA public key as a secret.
        let mut tried = false;
        for key in candidates {
            if !key.algorithms.contains(&header.alg) {
                continue;
            }
            tried = true;
            let mut validation = self.validation.clone();
            validation.algorithms = vec![header.alg];
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => return Ok(grant(data.claims)),
                Err(e) => match e.kind() {
                    ErrorKind::InvalidSignature
                    | ErrorKind::InvalidAlgorithm
                    | ErrorKind::InvalidKeyFormat
                    | ErrorKind::InvalidRsaKey(_)
                    | ErrorKind::InvalidEddsaKey
                    | ErrorKind::InvalidEcdsaKey => continue,
                    other => return Err(map_kind(other)),
                },
            }
        }
        Err(if tried {
            AuthError::BadSignature
        } else {
            AuthError::WrongAlgorithm
        })
    }
}

fn grant(c: Claims) -> Grant {
    let (kpis, dropped) = KpiGrants::parse_lenient(c.kpis.iter().map(String::as_str));
    if dropped > 0 {
        tracing::debug!(dropped, "ignored invalid entries of a token's kpis claim");
    }
    Grant {
        subject: c.sub.map(|s| s.chars().take(128).collect()),
        kpis,
        admin: c.admin,
        // Validation requires `exp`, so the fallback (expire now) never applies.
        expires_at: c.exp.unwrap_or(0),
    }
}

fn map_kind(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::MissingRequiredClaim(c) => {
            AuthError::BadClaims(format!("missing required claim {c:?}"))
        }
        ErrorKind::InvalidClaimFormat(c) => {
            AuthError::BadClaims(format!("claim {c:?} is malformed"))
        }
        ErrorKind::Json(_) => {
            AuthError::BadClaims("`kpis` must be a list of strings, `admin` a boolean".into())
        }
        _ => AuthError::Malformed,
    }
}

fn jwk_algorithms(
    declared: Option<KeyAlgorithm>,
    params: &AlgorithmParameters,
) -> Option<Vec<Algorithm>> {
    let from_declared = |k: KeyAlgorithm| -> Option<Algorithm> {
        Some(match k {
            KeyAlgorithm::HS256 => Algorithm::HS256,
            KeyAlgorithm::HS384 => Algorithm::HS384,
            KeyAlgorithm::HS512 => Algorithm::HS512,
            KeyAlgorithm::ES256 => Algorithm::ES256,
            KeyAlgorithm::ES384 => Algorithm::ES384,
            KeyAlgorithm::RS256 => Algorithm::RS256,
            KeyAlgorithm::RS384 => Algorithm::RS384,
            KeyAlgorithm::RS512 => Algorithm::RS512,
            KeyAlgorithm::PS256 => Algorithm::PS256,
            KeyAlgorithm::PS384 => Algorithm::PS384,
            KeyAlgorithm::PS512 => Algorithm::PS512,
            KeyAlgorithm::EdDSA => Algorithm::EdDSA,
            _ => return None,
        })
    };
    if let Some(k) = declared {
        return from_declared(k).map(|a| vec![a]);
    }
    // No `alg` on the key: the one algorithm its type implies.
    Some(vec![match params {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
        AlgorithmParameters::OctetKey(_) => Algorithm::HS256,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            _ => return None,
        },
        // `Other` and whatever a later jsonwebtoken adds (the enum is non-exhaustive).
        _ => return None,
    }])
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|e| key_error(what, path, e))
}

fn key_error(what: &'static str, path: &Path, problem: impl std::fmt::Display) -> KeyError {
    KeyError {
        what,
        path: path.display().to_string(),
        problem: problem.to_string(),
    }
}

fn trim_newline(raw: &[u8]) -> &[u8] {
    let raw = raw.strip_suffix(b"\n").unwrap_or(raw);
    raw.strip_suffix(b"\r").unwrap_or(raw)
}

/// Where the request carried a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    Header,
    Subprotocol,
    Query,
}

/// The token a request presents, looked for in `Authorization: Bearer`, then
/// the `bearer.<token>` WebSocket subprotocol, then `?token=` in `raw_query`.
/// `Err` when a place holds something that is not a usable token (a non-Bearer
/// Authorization, say), so a client is told rather than treated as anonymous.
pub fn token_from_request(
    headers: &HeaderMap,
    raw_query: Option<&str>,
) -> Result<Option<(String, TokenSource)>, AuthError> {
    if let Some(v) = headers.get(axum::http::header::AUTHORIZATION) {
        let v = v.to_str().map_err(|_| AuthError::Malformed)?;
        let (scheme, token) = v.trim().split_once(' ').ok_or(AuthError::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Malformed);
        }
        return Ok(Some((token.trim().to_owned(), TokenSource::Header)));
    }
    for v in headers.get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL) {
        let Ok(v) = v.to_str() else { continue };
        for proto in v.split(',') {
            if let Some(token) = proto.trim().strip_prefix(BEARER_SUBPROTOCOL_PREFIX) {
                return Ok(Some((token.to_owned(), TokenSource::Subprotocol)));
            }
        }
    }
    if let Some(q) = raw_query {
        if let Some(token) = query_param(q, "token")? {
            return Ok(Some((token, TokenSource::Query)));
        }
    }
    Ok(None)
}

/// One `name=value` parameter of a raw query string, percent-decoded.
pub fn query_param(raw_query: &str, name: &str) -> Result<Option<String>, AuthError> {
    let uri: axum::http::Uri = match format!("/?{raw_query}").parse() {
        Ok(u) => u,
        Err(_) => return Err(AuthError::Malformed),
    };
    let q = axum::extract::Query::<std::collections::HashMap<String, String>>::try_from_uri(&uri)
        .map_err(|_| AuthError::Malformed)?;
    Ok(q.0.get(name).cloned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn token(claims: serde_json::Value) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .expect("encode")
    }

    #[test]
    fn accepts_a_good_token_and_reads_its_claims() {
        let v = Verifier::hs256(SECRET);
        let t = token(
            json!({"sub": "alice", "exp": now() + 60, "kpis": ["sales_*", "bad*x"], "admin": true}),
        );
        let g = v.verify(&t).expect("valid");
        assert_eq!(g.subject.as_deref(), Some("alice"));
        assert!(g.admin);
        assert!(g.may_read(&KpiCode::parse("sales_eu").expect("code")));
        assert!(!g.may_read(&KpiCode::parse("hr_payroll").expect("code")));
    }

    #[test]
    fn refuses_expired_immature_and_exp_less_tokens() {
        let v = Verifier::hs256(SECRET);
        assert_eq!(
            v.verify(&token(json!({"exp": now() - 120}))),
            Err(AuthError::Expired)
        );
        assert_eq!(
            v.verify(&token(json!({"exp": now() + 600, "nbf": now() + 300}))),
            Err(AuthError::NotYetValid)
        );
        assert!(matches!(
            v.verify(&token(json!({"sub": "x"}))),
            Err(AuthError::BadClaims(_))
        ));
        assert!(matches!(
            v.verify(&token(json!({"exp": now() + 60, "kpis": "sales_*"}))),
            Err(AuthError::BadClaims(_))
        ));
    }

    #[test]
    fn refuses_garbage() {
        let v = Verifier::hs256(SECRET);
        for bad in [
            "",
            "a",
            "a.b.c",
            "..",
            "eyJhbGciOiJub25lIn0.e30.",
            &"x".repeat(MAX_TOKEN_BYTES + 1),
        ] {
            assert!(v.verify(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn finds_the_token_in_header_subprotocol_and_query() {
        let mut h = HeaderMap::new();
        assert_eq!(token_from_request(&h, Some("a=1")), Ok(None));
        assert_eq!(
            token_from_request(&h, Some("token=a%2Eb&x=1"))
                .expect("ok")
                .map(|t| t.0),
            Some("a.b".to_string())
        );
        h.insert(
            "sec-websocket-protocol",
            "kpistream, bearer.xyz".parse().expect("hv"),
        );
        assert_eq!(
            token_from_request(&h, None).expect("ok"),
            Some(("xyz".into(), TokenSource::Subprotocol))
        );
        h.insert("authorization", "Bearer abc".parse().expect("hv"));
        assert_eq!(
            token_from_request(&h, None).expect("ok"),
            Some(("abc".into(), TokenSource::Header))
        );
        h.insert("authorization", "Basic abc".parse().expect("hv"));
        assert_eq!(token_from_request(&h, None), Err(AuthError::Malformed));
    }
}
