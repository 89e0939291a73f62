//! [`Routes`]: an axum router that keeps the table of what it serves, so tests can hold it against docs/openapi.yaml.
//!
//! axum's `Router` cannot list its routes. Every service builds its HTTP
//! router through [`Routes`] instead: each `get`/`post` call adds the route
//! to the `Router` and its [`Endpoint`] to the table together, and `merge`,
//! `layer` and `with_state` carry the table along, so it lists exactly what
//! the router answers. The table needs no state value: a service's route
//! function can be called with none to list it.

use std::convert::Infallible;

use axum::extract::Request;
use axum::handler::Handler;
use axum::response::IntoResponse;
use axum::routing::{get, post, Route};
use axum::Router;
use tower::{Layer, Service};

/// An HTTP method a kpistream route answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Method {
    Get,
    Post,
}

impl Method {
    /// Lowercase, as OpenAPI names an operation under its path.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "get",
            Method::Post => "post",
        }
    }
}

/// One route: its method and its path in axum's syntax (`/api/kpi/{code}`,
/// which is OpenAPI's too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub method: Method,
    pub path: &'static str,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method.as_str().to_uppercase(), self.path)
    }
}

/// A `Router<S>` and the table of its endpoints.
pub struct Routes<S = ()> {
    router: Router<S>,
    table: Vec<Endpoint>,
}

impl<S: Clone + Send + Sync + 'static> Default for Routes<S> {
    fn default() -> Self {
        Routes {
            router: Router::new(),
            table: Vec::new(),
        }
    }
}

impl<S: Clone + Send + Sync + 'static> Routes<S> {
    pub fn new() -> Self {
        Self::default()
    }

    /// `GET path` (and `HEAD`, which axum answers for every `GET`).
    pub fn get<H, T>(self, path: &'static str, handler: H) -> Self
    where
        H: Handler<T, S>,
        T: 'static,
    {
        self.add(Method::Get, path, get(handler))
    }

    /// `POST path`.
    pub fn post<H, T>(self, path: &'static str, handler: H) -> Self
    where
        H: Handler<T, S>,
        T: 'static,
    {
        self.add(Method::Post, path, post(handler))
    }

    fn add(
        mut self,
        method: Method,
        path: &'static str,
        route: axum::routing::MethodRouter<S>,
    ) -> Self {
        self.router = self.router.route(path, route);
        self.table.push(Endpoint { method, path });
        self
    }

    /// Both routers' routes (axum panics on a path served twice, as it would without this type).
    pub fn merge(mut self, other: Routes<S>) -> Self {
        self.router = self.router.merge(other.router);
        self.table.extend(other.table);
        self
    }

    /// Wraps every route added so far in `layer` (axum's `Router::layer`).
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: Layer<Route> + Clone + Send + Sync + 'static,
        L::Service: Service<Request> + Clone + Send + Sync + 'static,
        <L::Service as Service<Request>>::Response: IntoResponse + 'static,
        <L::Service as Service<Request>>::Error: Into<Infallible> + 'static,
        <L::Service as Service<Request>>::Future: Send + 'static,
    {
        self.router = self.router.layer(layer);
        self
    }

    /// Supplies the state the handlers need (axum's `Router::with_state`).
    pub fn with_state<S2: Clone + Send + Sync + 'static>(self, state: S) -> Routes<S2> {
        Routes {
            router: self.router.with_state(state),
            table: self.table,
        }
    }

    /// Every endpoint, in the order added.
    pub fn table(&self) -> &[Endpoint] {
        &self.table
    }

    pub fn into_router(self) -> Router<S> {
        self.router
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_follows_merges_and_state() {
        let inner = Routes::<u8>::new()
            .get("/a/{x}", || async { "a" })
            .post("/b", || async { "b" });
        let all: Routes<()> = Routes::new()
            .get("/c", || async { "c" })
            .merge(inner)
            .with_state(7);
        let listed: Vec<String> = all.table().iter().map(ToString::to_string).collect();
        assert_eq!(listed, ["GET /c", "GET /a/{x}", "POST /b"]);
    }
}
