//! `Host` and `Origin` checks.
//!
//! - DNS rebinding: a page on `evil.example` whose name is made to resolve to 127.0.0.1 sends
//!   requests with `Host: evil.example`. A server on a loopback address answers only the names
//!   of loopback (`localhost`, `127.0.0.1`, `[::1]`) and the hosts configured in
//!   `allowed_hosts`.
//! - Cross-site requests: a browser sends `Origin` with them; a request whose `Origin` is not
//!   the server itself (the same authority as its `Host`) or an allowed host is refused, so a
//!   web page cannot drive the API with a user's ambient access.

use axum::http::{HeaderMap, header};

use crate::api::error::ApiError;

#[derive(Debug, Clone, Default)]
pub struct Hosts {
    /// Host names accepted (lower case, without port); `None`: any host.
    allowed: Option<Vec<String>>,
}

const LOOPBACK: [&str; 4] = ["localhost", "127.0.0.1", "[::1]", "::1"];

/// The host of an authority (`name[:port]`, `[v6]:port`), lower case.
fn host_of(authority: &str) -> String {
    let a = authority.trim().to_ascii_lowercase();
    if a.starts_with('[') {
        return match a.find(']') {
            Some(i) => a[..=i].to_string(),
            None => a,
        };
    }
    match a.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|c| c.is_ascii_digit()) && !h.contains(':') => {
            h.to_string()
        }
        _ => a,
    }
}

impl Hosts {
    /// Any `Host` (a server on a routable address, or in-process use); `Origin` still checked.
    pub fn any() -> Hosts {
        Hosts { allowed: None }
    }

    /// Loopback names plus `extra`.
    pub fn loopback(extra: &[String]) -> Hosts {
        let mut allowed: Vec<String> = LOOPBACK.iter().map(|s| s.to_string()).collect();
        allowed.extend(extra.iter().map(|h| host_of(h)));
        Hosts {
            allowed: Some(allowed),
        }
    }

    fn allows(&self, host: &str) -> bool {
        match &self.allowed {
            None => true,
            Some(list) => list.iter().any(|h| h == host),
        }
    }

    pub fn check(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let host = headers
            .get(header::HOST)
            .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned());
        if let Some(h) = &host
            && !self.allows(&host_of(h))
        {
            return Err(ApiError::forbidden(format!(
                "requests for host {h:?} are refused: this server answers loopback names \
                 (add the name to allowed_hosts in the config to accept it)"
            )));
        }
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(());
        };
        let origin = String::from_utf8_lossy(origin.as_bytes()).to_ascii_lowercase();
        let authority = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .unwrap_or("");
        let same = host
            .as_deref()
            .is_some_and(|h| !authority.is_empty() && h.eq_ignore_ascii_case(authority));
        if same {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "cross-origin request from {origin:?} refused"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn loopback_names_pass_and_rebinding_names_do_not() {
        let hosts = Hosts::loopback(&["kflow.internal".into()]);
        for ok in [
            "localhost:8080",
            "127.0.0.1:1",
            "[::1]:8080",
            "LOCALHOST",
            "kflow.internal:9",
        ] {
            assert!(hosts.check(&headers(&[("host", ok)])).is_ok(), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "127.0.0.1.evil.example",
        ] {
            let e = hosts.check(&headers(&[("host", bad)])).unwrap_err();
            assert_eq!(e.status, 403, "{bad}");
        }
        assert!(
            hosts.check(&HeaderMap::new()).is_ok(),
            "no Host: not a browser"
        );
    }

    #[test]
    fn a_foreign_origin_is_refused_and_the_same_origin_passes() {
        for hosts in [Hosts::any(), Hosts::loopback(&[])] {
            let same = headers(&[
                ("host", "127.0.0.1:8080"),
                ("origin", "http://127.0.0.1:8080"),
            ]);
            assert!(hosts.check(&same).is_ok());
            for origin in [
                "http://evil.example",
                "null",
                "http://127.0.0.1:9999",
                "file://",
            ] {
                let h = headers(&[("host", "127.0.0.1:8080"), ("origin", origin)]);
                assert!(hosts.check(&h).is_err(), "{origin}");
            }
        }
    }
}
