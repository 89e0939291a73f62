//! The dashboard page, its script and style, and the browser client `/kpistream.js`, compiled into the binary.
//!
//! Everything the page needs is served from here (no CDN), so a dashboard
//! works on a LAN without Internet access. Caching: the page and
//! `/kpistream.js` (a stable URL other sites import) are revalidated on every
//! load (`no-cache` + `ETag`), so a gateway upgrade reaches browsers at once;
//! the page's own script and style are referenced with `?v=<content hash>`
//! and cached for a year when the hash matches, since that URL changes with
//! their content.

use std::sync::OnceLock;

use axum::extract::{Path, Query};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use kpi_service::Routes;

use crate::request;

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");
const CLIENT_JS: &str = include_str!("../assets/kpistream.js");
const FAVICON_SVG: &str = include_str!("../assets/favicon.svg");

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const SVG: &str = "image/svg+xml";

/// Revalidate every time; the `ETag` makes that a 304 when nothing changed.
pub(crate) const REVALIDATE: &str = "no-cache";
/// For `?v=<hash>` URLs whose hash matches: the content behind them never changes.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// The page may load only its own scripts and styles and talk only to its
/// own origin (HTTP, SSE and WebSocket).
const PAGE_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'";

/// The routes of this module, merged into the gateway's router.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> Routes<S> {
    Routes::new()
        .get("/", index)
        .get("/index.html", index)
        .get("/kpistream.js", client)
        .get("/favicon.ico", favicon)
        .get("/assets/{name}", asset)
}

/// FNV-1a 64: stable across builds and platforms, enough to tell versions apart.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A short hash of every asset: the `?v=` the page puts on its asset URLs.
fn version() -> &'static str {
    static V: OnceLock<String> = OnceLock::new();
    V.get_or_init(|| {
        let all = [INDEX_HTML, APP_JS, APP_CSS, CLIENT_JS, FAVICON_SVG].concat();
        format!("{:012x}", fnv1a(all.as_bytes()) & 0xffff_ffff_ffff)
    })
}

/// The page with its asset URLs pinned to this build's version.
fn index_html() -> &'static str {
    static PAGE: OnceLock<String> = OnceLock::new();
    PAGE.get_or_init(|| INDEX_HTML.replace("__ASSET_VERSION__", version()))
}

/// A body with its content type, cache policy and `ETag`; 304 when the
/// browser already holds this exact body.
pub(crate) fn serve(
    headers: &HeaderMap,
    body: &'static str,
    content_type: &'static str,
    cache: &'static str,
) -> Response {
    let etag = format!("\"{:016x}\"", fnv1a(body.as_bytes()));
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let etag = HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"0\""));
    let common = [
        (header::ETAG, etag),
        (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
    ];
    if matches {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (
        common,
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response()
}

async fn index(headers: HeaderMap) -> Response {
    let mut resp = serve(&headers, index_html(), HTML, REVALIDATE);
    resp.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_CSP),
    );
    resp.headers_mut()
        .insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    resp
}

async fn client(headers: HeaderMap) -> Response {
    let mut resp = serve(&headers, CLIENT_JS, JS, REVALIDATE);
    // A stable library URL: other origins' dashboards may import it.
    resp.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    resp
}

async fn favicon(headers: HeaderMap) -> Response {
    serve(&headers, FAVICON_SVG, SVG, REVALIDATE)
}

/// `/assets/<name>`: only the files listed here; anything else is a 404.
async fn asset(
    Path(name): Path<String>,
    Query(q): Query<request::Query>,
    headers: HeaderMap,
) -> Response {
    let (body, content_type) = match name.as_str() {
        "app.js" => (APP_JS, JS),
        "app.css" => (APP_CSS, CSS),
        "kpistream.js" => (CLIENT_JS, JS),
        "favicon.svg" => (FAVICON_SVG, SVG),
        _ => return (StatusCode::NOT_FOUND, "no such asset").into_response(),
    };
    // Only a URL naming this build's version may be cached for good; an old
    // page asking with an old hash gets the current file, revalidated.
    let cache = if q.get("v").map(String::as_str) == Some(version()) {
        IMMUTABLE
    } else {
        REVALIDATE
    };
    serve(&headers, body, content_type, cache)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_pins_its_assets_to_this_build() {
        let page = index_html();
        assert!(!page.contains("__ASSET_VERSION__"));
        assert!(page.contains(&format!("/assets/app.js?v={}", version())));
        assert!(page.contains(&format!("/assets/app.css?v={}", version())));
    }

    #[test]
    fn the_client_documents_its_api() {
        // Built from clients/js by esbuild, which writes `var KpiStream = class`
        // and one `export { .. }` list at the end.
        for needle in [
            "GENERATED FILE",
            "var KpiStream = class",
            "  KpiStream,\n",
            "subscribe(",
            "switchPeriod(",
            "unsubscribe(",
        ] {
            assert!(CLIENT_JS.contains(needle), "{needle}");
        }
    }
}
