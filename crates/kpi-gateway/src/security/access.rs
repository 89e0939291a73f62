//! Who the caller is and what they may read: the [`Caller`] every client-facing handler takes.
//!
//! The extractor verifies the token or applies the anonymous policy
//! (answering 401 otherwise) through [`Security::identify`]; handlers ask
//! [`Caller::may_read`] for each topic before subscribing or reading, so the
//! check sits in one place per transport.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::StatusCode;
use kpi_core::KpiCode;

use crate::request::ApiError;
use crate::security::audit::{self, Who};
use crate::security::auth::Grant;
use crate::security::Security;

/// What the caller may do.
#[derive(Debug, Clone)]
pub(crate) enum Access {
    /// No token, and the gateway allows anonymous reading: every KPI, no admin.
    Anonymous,
    Token(Grant),
}

impl Access {
    pub fn may_read(&self, code: &KpiCode) -> bool {
        match self {
            Access::Anonymous => true,
            Access::Token(g) => g.may_read(code),
        }
    }

    pub fn subject(&self) -> Option<&str> {
        match self {
            Access::Anonymous => None,
            Access::Token(g) => g.subject.as_deref(),
        }
    }

    /// `exp` of the token, seconds since the epoch.
    pub fn expires_at(&self) -> Option<u64> {
        match self {
            Access::Anonymous => None,
            Access::Token(g) => Some(g.expires_at),
        }
    }
}

/// The caller of one request: extracted before the handler runs.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub access: Access,
    pub ip: Option<IpAddr>,
}

impl Caller {
    /// Whom per-caller limits count against: the token's subject, else the
    /// client's address (behind a balancer, the balancer's).
    pub fn key(&self) -> String {
        match (self.access.subject(), self.ip) {
            (Some(sub), _) => format!("sub:{sub}"),
            (None, Some(ip)) => format!("ip:{ip}"),
            (None, None) => "anonymous".to_string(),
        }
    }

    pub fn who(&self) -> Who<'_> {
        Who {
            subject: self.access.subject(),
            remote_ip: self.ip,
        }
    }

    /// 403 `forbidden` (and an audit record) unless the caller may read `code`.
    pub fn may_read(&self, code: &KpiCode, action: &str) -> Result<(), ApiError> {
        if self.access.may_read(code) {
            return Ok(());
        }
        audit::denied(action, "forbidden_kpi", self.who(), Some(code.as_str()));
        Err(forbidden(code))
    }

    /// The admin claim, or 401 (no token) / 403 (a token without it).
    pub fn require_admin(&self, action: &str) -> Result<(), ApiError> {
        match &self.access {
            Access::Token(g) if g.admin => Ok(()),
            Access::Token(_) => {
                audit::denied(action, "not_admin", self.who(), None);
                Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "this action needs a token with the admin claim",
                ))
            }
            Access::Anonymous => {
                audit::denied(action, "token_missing", self.who(), None);
                Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "this action needs a token with the admin claim",
                ))
            }
        }
    }
}

pub(crate) fn forbidden(code: &KpiCode) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!("this token may not read KPI {:?}", code.as_str()),
    )
}

impl<S: Send + Sync> FromRequestParts<S> for Caller
where
    Security: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        Security::from_ref(state).identify(&parts.headers, parts.uri.query(), ip)
    }
}
