//! One client's admission and life, whatever its transport.
//!
//! Every transport goes through here: [`Session::admit`] checks the door
//! (maintenance, Origin, per-IP rate; [`crate::security::Security::admit`])
//! and takes a connection slot, for as long as the request or connection is
//! served; [`Admitted::open`] adds what a streaming client needs: an outbox,
//! a listing for admin broadcasts, and a watch that closes the session when
//! its token expires. [`Session::subscribe`] is the one way to a topic: the
//! caller's distinct-topic cap, then the hub (with the gateway's cap).
//! Dropping the session releases all of it.

pub(crate) mod clients;
pub(crate) mod expiry;
pub(crate) mod quota;
pub(crate) mod slots;

use axum::http::{HeaderMap, StatusCode};
use kpi_core::Topic;

use crate::fanout::hub;
use crate::fanout::outbox::{Mode, Outbox, SubId};
use crate::fanout::topic::Start;
use crate::metrics::Transport;
use crate::request::ApiError;
use crate::security::access::{Access, Caller};
use crate::state::AppState;
use crate::GatewayError;
use clients::Registered;
use expiry::ExpiryWatch;
use quota::Claim;
use slots::Permit;

/// A client past admission, holding a connection slot until dropped.
pub(crate) struct Admitted {
    app: AppState,
    caller: Caller,
    _slot: Permit,
}

/// An admitted client with an outbox: what WebSockets, SSE and long polls hold.
pub(crate) struct Session {
    outbox: Outbox,
    expiry: ExpiryWatch,
    _listed: Registered,
    /// Last: the slot is freed after everything else.
    admitted: Admitted,
}

/// Why a subscription was refused; each maps to an error code and status.
#[derive(Debug)]
pub(crate) enum SubscribeError {
    /// The caller already watches this many other topics.
    CallerLimit { max: usize },
    /// The hub refused: the gateway's cap, the bus, or shutting down.
    Gateway(GatewayError),
}

impl SubscribeError {
    /// The machine-readable code clients see.
    pub fn code(&self) -> &'static str {
        match self {
            SubscribeError::CallerLimit { .. } => "too_many_topics",
            SubscribeError::Gateway(GatewayError::TopicLimit { .. }) => "topic_limit",
            SubscribeError::Gateway(_) => "unavailable",
        }
    }

    pub fn message(&self) -> String {
        match self {
            SubscribeError::CallerLimit { max } => format!(
                "this caller already watches {max} distinct topics, the most allowed; unsubscribe from one first"
            ),
            SubscribeError::Gateway(e) => e.to_string(),
        }
    }
}

impl From<SubscribeError> for ApiError {
    fn from(e: SubscribeError) -> Self {
        let status = match e {
            SubscribeError::CallerLimit { .. } => StatusCode::TOO_MANY_REQUESTS,
            SubscribeError::Gateway(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, e.code(), e.message())
    }
}

/// A session's subscription to a topic, counted against its caller until dropped.
pub(crate) struct Subscription {
    inner: hub::Subscription,
    _claim: Claim,
}

impl Subscription {
    pub fn id(&self) -> SubId {
        self.inner.id()
    }
}

/// A topic taken for a session, not yet attached to its outbox.
pub(crate) struct Watch {
    interest: hub::Interest,
    claim: Claim,
}

impl Watch {
    /// Queues the first messages (see [`Start`]) and then every update.
    pub fn attach(self, session: &Session, sub: SubId, start: Start, mode: Mode) -> Subscription {
        Subscription {
            inner: self.interest.attach(&session.outbox, sub, start, mode),
            _claim: self.claim,
        }
    }
}

impl Session {
    /// The door every request passes: 503 `maintenance`, 403
    /// `origin_not_allowed`, 429 `rate_limited` or 503 `too_many_connections`.
    pub fn admit(
        app: &AppState,
        caller: Caller,
        headers: &HeaderMap,
        transport: Transport,
    ) -> Result<Admitted, ApiError> {
        app.security.admit(&caller, headers)?;
        let slot = app.slots.try_acquire(transport).ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_connections",
                "this gateway is at its connection limit; retry later or elsewhere",
            )
        })?;
        Ok(Admitted {
            app: app.clone(),
            caller,
            _slot: slot,
        })
    }

    pub fn app(&self) -> &AppState {
        &self.admitted.app
    }

    pub fn caller(&self) -> &Caller {
        &self.admitted.caller
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Subscribes this session's outbox to `topic` as subscription `sub`.
    pub async fn subscribe(
        &self,
        topic: Topic,
        sub: SubId,
        start: Start,
        mode: Mode,
    ) -> Result<Subscription, SubscribeError> {
        Ok(self.watch(topic).await?.attach(self, sub, start, mode))
    }

    /// Takes `topic` against the caller's and the gateway's caps, without
    /// queuing anything yet (so a reply can go out before the snapshot).
    pub async fn watch(&self, topic: Topic) -> Result<Watch, SubscribeError> {
        let app = &self.admitted.app;
        let claim = app.quota.claim(&self.admitted.caller.key(), &topic).ok_or(
            SubscribeError::CallerLimit {
                max: app.quota.max(),
            },
        )?;
        let interest = app
            .hub
            .watch(topic)
            .await
            .map_err(SubscribeError::Gateway)?;
        Ok(Watch { interest, claim })
    }

    /// A fresh token's grant replaces the session's, and its expiry the deadline.
    pub fn reauthenticate(&mut self, access: Access) {
        self.expiry.set(access.expires_at());
        self.admitted.caller.access = access;
    }
}

impl Admitted {
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// Gives the client an outbox, lists it for admin broadcasts and closes
    /// it when its token expires.
    pub fn open(self) -> Session {
        let outbox = Outbox::new(self.app.settings.queue_capacity);
        let access = &self.caller.access;
        let expiry = ExpiryWatch::start(
            &outbox,
            access.expires_at(),
            access.subject().map(str::to_owned),
        );
        Session {
            _listed: self.app.clients.register(&outbox),
            admitted: self,
            outbox,
            expiry,
        }
    }
}
