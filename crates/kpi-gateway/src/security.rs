//! The gateway's access policy at its door: tokens, the anonymous policy, origins, per-IP rate and maintenance.
//!
//! [`Security::identify`] turns a request into a [`Caller`] (or a 401);
//! [`Security::admit`] is the first check of every session whatever its
//! transport. Refusals are audit records ([`audit`]), never with the token.

pub(crate) mod access;
pub mod audit;
pub mod auth;
pub mod connect_rate;
pub(crate) mod cors;
pub mod origin;

use std::net::IpAddr;
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use parking_lot::Mutex;

use crate::request::ApiError;
use access::{Access, Caller};
use audit::Who;
use auth::{AuthError, Grant, Verifier};
use connect_rate::ConnectRate;
use origin::OriginPolicy;

/// The gateway's access policy and the state admin actions change. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Security {
    inner: Arc<Inner>,
}

struct Inner {
    verifier: Option<Verifier>,
    allow_anonymous: bool,
    origins: OriginPolicy,
    connect_rate: ConnectRate,
    /// `Some(message)` while maintenance mode is on.
    maintenance: Mutex<Option<String>>,
}

impl Security {
    pub fn new(
        verifier: Option<Verifier>,
        allow_anonymous: bool,
        origins: OriginPolicy,
        connect_rate: ConnectRate,
    ) -> Self {
        Security {
            inner: Arc::new(Inner {
                verifier,
                allow_anonymous,
                origins,
                connect_rate,
                maintenance: Mutex::new(None),
            }),
        }
    }

    pub fn origins(&self) -> &OriginPolicy {
        &self.inner.origins
    }

    pub fn set_maintenance(&self, message: Option<String>) {
        *self.inner.maintenance.lock() = message;
    }

    pub fn maintenance(&self) -> Option<String> {
        self.inner.maintenance.lock().clone()
    }

    /// Verifies a token presented later on an open connection (`{"type":"auth"}`).
    pub fn verify(&self, token: &str) -> Result<Grant, AuthError> {
        match &self.inner.verifier {
            Some(v) => v.verify(token),
            None => Err(AuthError::NotConfigured),
        }
    }

    /// Who is calling: a verified token, anonymous (when allowed), or a 401.
    pub fn identify(
        &self,
        headers: &HeaderMap,
        raw_query: Option<&str>,
        ip: Option<IpAddr>,
    ) -> Result<Caller, ApiError> {
        let who = Who {
            subject: None,
            remote_ip: ip,
        };
        let presented = auth::token_from_request(headers, raw_query)
            .map_err(|e| unauthorized("authenticate", &e, who))?;
        match (presented, &self.inner.verifier) {
            (Some((token, _)), Some(verifier)) => match verifier.verify(&token) {
                Ok(grant) => Ok(Caller {
                    access: Access::Token(grant),
                    ip,
                }),
                Err(e) => Err(unauthorized("authenticate", &e, who)),
            },
            // An open gateway without keys ignores a token rather than break
            // clients that always send one.
            (Some(_), None) if self.inner.allow_anonymous => Ok(Caller {
                access: Access::Anonymous,
                ip,
            }),
            (Some(_), None) => Err(unauthorized("authenticate", &AuthError::NotConfigured, who)),
            (None, _) if self.inner.allow_anonymous => Ok(Caller {
                access: Access::Anonymous,
                ip,
            }),
            (None, _) => Err(unauthorized("authenticate", &AuthError::Missing, who)),
        }
    }

    /// May this request in? Every transport asks before anything else:
    /// 503 `maintenance`, 403 `origin_not_allowed` or 429 `rate_limited` otherwise.
    pub fn admit(&self, caller: &Caller, headers: &HeaderMap) -> Result<(), ApiError> {
        if let Some(message) = self.maintenance() {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "maintenance",
                format!("the service is in maintenance and takes no new connections: {message}"),
            ));
        }
        if let Err(origin) = self.inner.origins.check(headers) {
            audit::denied("connect", "origin_not_allowed", caller.who(), None);
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "origin_not_allowed",
                format!("pages from origin {origin:?} may not connect to this gateway"),
            ));
        }
        if let Some(ip) = caller.ip {
            if !self.inner.connect_rate.allow(ip) {
                return Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "too many new connections from this address; retry in a second",
                ));
            }
        }
        Ok(())
    }
}

fn unauthorized(action: &str, e: &AuthError, who: Who<'_>) -> ApiError {
    audit::denied(action, e.reason(), who, None);
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string())
}
