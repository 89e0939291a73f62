//! Access control at the gateway's doors: who the caller is, what they may read, and whether a connection may open.
//!
//! Every client-facing handler takes a [`Caller`] (its extractor verifies the
//! token or applies the anonymous policy, answering 401 otherwise) and asks
//! [`Caller::may_read`] for each topic before subscribing or reading, so the
//! check sits in one place per transport. Connections (WebSocket, SSE) also
//! pass [`Security::admit`]: maintenance, the Origin allow-list and the per-IP
//! connection rate, all answered before any upgrade. A connection opened with
//! a token is closed when the token expires ([`ExpiryWatch`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use kpi_core::{ErrorMessage, KpiCode};
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::admin::Clients;
use crate::audit::{self, Who};
use crate::auth::{AuthError, Grant, Verifier};
use crate::close_codes;
use crate::connection::error_bytes;
use crate::ip_rate::IpRate;
use crate::origin::OriginPolicy;
use crate::outbox::Outbox;
use crate::request::ApiError;
use crate::server::AppState;

/// The gateway's access policy and the state admin actions change. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Security {
    inner: Arc<Inner>,
}

struct Inner {
    verifier: Option<Verifier>,
    allow_anonymous: bool,
    origins: OriginPolicy,
    ip_rate: IpRate,
    /// `Some(message)` while maintenance mode is on.
    maintenance: Mutex<Option<String>>,
    clients: Clients,
}

impl Security {
    pub fn new(
        verifier: Option<Verifier>,
        allow_anonymous: bool,
        origins: OriginPolicy,
        ip_rate: IpRate,
    ) -> Self {
        Security {
            inner: Arc::new(Inner {
                verifier,
                allow_anonymous,
                origins,
                ip_rate,
                maintenance: Mutex::new(None),
                clients: Clients::default(),
            }),
        }
    }

    pub fn clients(&self) -> &Clients {
        &self.inner.clients
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
        let presented = crate::auth::token_from_request(headers, raw_query)
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

    /// May a new WebSocket or SSE connection open? Answers 503 `maintenance`,
    /// 403 `origin_not_allowed` or 429 `rate_limited` otherwise.
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
            if !self.inner.ip_rate.allow(ip) {
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

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        app.security.identify(&parts.headers, parts.uri.query(), ip)
    }
}

/// Closes a connection with 4001 `token_expired` when its token's `exp`
/// passes. The deadline can be moved (a refreshed token) or removed; dropping
/// the watch stops it.
pub(crate) struct ExpiryWatch {
    deadline: watch::Sender<Option<u64>>,
    task: tokio::task::AbortHandle,
}

impl ExpiryWatch {
    pub fn start(outbox: &Outbox, expires_at: Option<u64>, subject: Option<String>) -> Self {
        let (deadline, mut rx) = watch::channel(expires_at);
        let outbox = outbox.clone();
        let task = tokio::spawn(async move {
            loop {
                let current = *rx.borrow_and_update();
                let Some(exp) = current else {
                    if rx.changed().await.is_err() {
                        return;
                    }
                    continue;
                };
                tokio::select! {
                    () = tokio::time::sleep(until(exp)) => {
                        audit::denied(
                            "connection",
                            "token_expired",
                            Who { subject: subject.as_deref(), remote_ip: None },
                            None,
                        );
                        let e = ErrorMessage::new(
                            "token_expired",
                            "the token expired; reconnect with a fresh one (or send {\"type\":\"auth\",\"token\":..} before it expires)",
                        );
                        outbox.close(close_codes::TOKEN_EXPIRED, "token expired", Some(error_bytes(&e)));
                        return;
                    }
                    changed = rx.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                }
            }
        })
        .abort_handle();
        ExpiryWatch { deadline, task }
    }

    pub fn set(&self, expires_at: Option<u64>) {
        self.deadline.send_replace(expires_at);
    }
}

impl Drop for ExpiryWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Time from now until `exp` (seconds since the epoch); zero when past.
fn until(exp: u64) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Duration::from_secs(exp).saturating_sub(now)
}
