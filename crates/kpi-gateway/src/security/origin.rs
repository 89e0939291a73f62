//! The browser Origin allow-list for WebSocket and SSE.
//!
//! A WebSocket is not covered by the same-origin policy: any page a user
//! visits may open one to the gateway and, with `?token=` or cookies-like
//! ambient credentials, read what that user may read. Browsers always send
//! `Origin` on a WebSocket handshake and on a cross-origin `EventSource`, so
//! checking it before the upgrade stops a foreign page. A request without
//! `Origin` is not from a browser page and is not judged here (tokens are).

use axum::http::HeaderMap;

/// Allowed origins; empty allows every origin.
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    allowed: Vec<String>,
}

impl OriginPolicy {
    /// `origins` as given on the command line, e.g. `https://a.example`.
    pub fn new(origins: &[String]) -> Self {
        OriginPolicy {
            allowed: origins
                .iter()
                .map(|o| normalize(o))
                .filter(|o| !o.is_empty())
                .collect(),
        }
    }

    pub fn is_open(&self) -> bool {
        self.allowed.is_empty()
    }

    /// `Err(origin as sent)` when the request comes from a page that is not allowed.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), String> {
        if self.is_open() {
            return Ok(());
        }
        let Some(raw) = headers.get(axum::http::header::ORIGIN) else {
            return Ok(());
        };
        // An Origin that is not even text (or `null`, from a sandboxed or
        // file page) is not on any list.
        let shown = String::from_utf8_lossy(raw.as_bytes())
            .chars()
            .take(100)
            .collect::<String>();
        match raw.to_str() {
            Ok(o) if self.allowed.contains(&normalize(o)) => Ok(()),
            _ => Err(shown),
        }
    }
}

/// Lower-case, no trailing slash: `HTTPS://A.example/` and `https://a.example` are one origin.
fn normalize(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_origin(o: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("origin", o.parse().expect("header value"));
        h
    }

    #[test]
    fn empty_list_allows_all_and_a_list_allows_only_itself() {
        assert!(OriginPolicy::new(&[])
            .check(&with_origin("https://evil.example"))
            .is_ok());
        let p = OriginPolicy::new(&["https://a.example".into(), "https://B.example/".into()]);
        assert!(p.check(&with_origin("https://a.example")).is_ok());
        assert!(p.check(&with_origin("https://b.example")).is_ok());
        assert!(p
            .check(&with_origin("https://a.example.evil.example"))
            .is_err());
        assert!(p.check(&with_origin("http://a.example")).is_err());
        assert!(p.check(&with_origin("null")).is_err());
        assert!(p.check(&HeaderMap::new()).is_ok());
    }
}
