//! HTTP Digest authentication (RFC 7616; RFC 2617's form without `qop` as well).
//!
//! The request goes out once without credentials; when the server answers 401 with a
//! `WWW-Authenticate: Digest` challenge, the http module sends it again with the answer built
//! here. The first challenge whose algorithm kflow knows wins (`MD5`, `MD5-sess`, `SHA-256`,
//! `SHA-256-sess`); `qop=auth` is preferred to `auth-int`; `userhash` is honoured. The hashes
//! come from RustCrypto's `md-5` and `sha2`.

use std::collections::HashMap;

use md5::Md5;
use reqwest::header::HeaderMap;
use sha2::{Digest as _, Sha256};

use kflow_effects::WfError;

use super::auth_error;
use crate::http::Outgoing;

/// The `Authorization` value answering the response's Digest challenge, or `None` when the
/// response has no Digest challenge at all.
pub(crate) fn answer(
    headers: &HeaderMap,
    username: &str,
    password: &str,
    out: &Outgoing,
) -> Result<Option<String>, WfError> {
    let challenges = challenges(headers);
    if challenges.is_empty() {
        return Ok(None);
    }
    let mut uri = out.url.path().to_string();
    if let Some(q) = out.url.query() {
        uri.push('?');
        uri.push_str(q);
    }
    let request = Request {
        method: out.method.as_str(),
        uri: &uri,
        body: out.body.as_deref().unwrap_or(&[]),
    };
    let cnonce = uuid::Uuid::new_v4().simple().to_string();
    respond(&challenges, username, password, &request, &cnonce).map(Some)
}

/// What of the request goes into the answer.
struct Request<'a> {
    method: &'a str,
    /// The request target as sent (path and query).
    uri: &'a str,
    /// Hashed for `qop=auth-int`.
    body: &'a [u8],
}

#[derive(Clone, Copy)]
enum Algorithm {
    Md5,
    Sha256,
}

impl Algorithm {
    /// The lowercase hex digest of `data`.
    fn hash(self, data: &[u8]) -> String {
        match self {
            Algorithm::Md5 => format!("{:x}", Md5::digest(data)),
            Algorithm::Sha256 => format!("{:x}", Sha256::digest(data)),
        }
    }
}

/// The answer to the first challenge kflow can answer, with the given client nonce (random in
/// [`answer`], fixed in the known-answer tests).
fn respond(
    challenges: &[HashMap<String, String>],
    username: &str,
    password: &str,
    req: &Request<'_>,
    cnonce: &str,
) -> Result<String, WfError> {
    let pick = challenges.iter().find_map(|c| {
        let alg = c
            .get("algorithm")
            .map(|a| a.to_ascii_uppercase())
            .unwrap_or_else(|| "MD5".into());
        let h = match alg.as_str() {
            "MD5" | "MD5-SESS" => Algorithm::Md5,
            "SHA-256" | "SHA-256-SESS" => Algorithm::Sha256,
            _ => return None,
        };
        Some((c, alg.ends_with("-SESS"), h))
    });
    let Some((c, sess, alg)) = pick else {
        let algs: Vec<String> = challenges
            .iter()
            .map(|c| c.get("algorithm").cloned().unwrap_or_else(|| "MD5".into()))
            .collect();
        return Err(auth_error(format!(
            "digest authentication: the server asks for algorithm(s) {} (kflow supports MD5, MD5-sess, SHA-256, SHA-256-sess)",
            algs.join(", ")
        )));
    };
    let h = |data: &[u8]| alg.hash(data);
    let realm = c.get("realm").cloned().unwrap_or_default();
    let nonce = c
        .get("nonce")
        .cloned()
        .ok_or_else(|| auth_error("digest authentication: the server's challenge has no nonce"))?;
    let qops: Vec<String> = c
        .get("qop")
        .map(|q| {
            q.split(',')
                .map(|s| s.trim().to_ascii_lowercase())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let qop = if qops.is_empty() {
        None
    } else if qops.iter().any(|q| q == "auth") {
        Some("auth")
    } else if qops.iter().any(|q| q == "auth-int") {
        Some("auth-int")
    } else {
        return Err(auth_error(format!(
            "digest authentication: unsupported qop '{}'",
            qops.join(",")
        )));
    };
    let (method, uri) = (req.method, req.uri);
    let nc = "00000001";
    let mut ha1 = h(format!("{username}:{realm}:{password}").as_bytes());
    if sess {
        ha1 = h(format!("{ha1}:{nonce}:{cnonce}").as_bytes());
    }
    let ha2 = match qop {
        Some("auth-int") => {
            let body_hash = h(req.body);
            h(format!("{method}:{uri}:{body_hash}").as_bytes())
        }
        _ => h(format!("{method}:{uri}").as_bytes()),
    };
    let response = match qop {
        Some(q) => h(format!("{ha1}:{nonce}:{nc}:{cnonce}:{q}:{ha2}").as_bytes()),
        None => h(format!("{ha1}:{nonce}:{ha2}").as_bytes()),
    };
    let userhash = c
        .get("userhash")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let user_field = if userhash {
        h(format!("{username}:{realm}").as_bytes())
    } else {
        username.to_string()
    };
    let quote = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let mut value = format!(
        "Digest username=\"{}\", realm=\"{}\", uri=\"{}\", algorithm={}, nonce=\"{}\"",
        quote(&user_field),
        quote(&realm),
        quote(uri),
        c.get("algorithm").cloned().unwrap_or_else(|| "MD5".into()),
        quote(&nonce)
    );
    if let Some(q) = qop {
        value.push_str(&format!(", qop={q}, nc={nc}, cnonce=\"{cnonce}\""));
    }
    value.push_str(&format!(", response=\"{response}\""));
    if let Some(o) = c.get("opaque") {
        value.push_str(&format!(", opaque=\"{}\"", quote(o)));
    }
    if userhash {
        value.push_str(", userhash=true");
    }
    Ok(value)
}

/// The parameters of every Digest challenge in the response's `WWW-Authenticate` headers.
fn challenges(headers: &HeaderMap) -> Vec<HashMap<String, String>> {
    let mut out = Vec::new();
    for v in headers.get_all(reqwest::header::WWW_AUTHENTICATE) {
        let text = String::from_utf8_lossy(v.as_bytes()).into_owned();
        out.extend(parse_challenges(&text));
    }
    out
}

/// Parses `Scheme k=v, k="v", Scheme2 ...`, keeping only Digest challenges.
fn parse_challenges(s: &str) -> Vec<HashMap<String, String>> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    let mut current: Option<(bool, HashMap<String, String>)> = None;
    let is_tchar = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c);
    while i < b.len() {
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t' || b[i] == b',') {
            i += 1;
        }
        let start = i;
        while i < b.len() && is_tchar(b[i]) {
            i += 1;
        }
        if start == i {
            // Not a token: skip one byte to make progress on malformed input.
            i += 1;
            continue;
        }
        let token = &s[start..i];
        let mut j = i;
        while j < b.len() && (b[j] == b' ' || b[j] == b'\t') {
            j += 1;
        }
        if j < b.len() && b[j] == b'=' {
            // auth-param
            j += 1;
            while j < b.len() && (b[j] == b' ' || b[j] == b'\t') {
                j += 1;
            }
            let mut value = String::new();
            if j < b.len() && b[j] == b'"' {
                j += 1;
                let mut bytes = Vec::new();
                while j < b.len() && b[j] != b'"' {
                    if b[j] == b'\\' && j + 1 < b.len() {
                        j += 1;
                    }
                    bytes.push(b[j]);
                    j += 1;
                }
                j += 1; // closing quote (or end)
                value = String::from_utf8_lossy(&bytes).into_owned();
            } else {
                let vs = j;
                while j < b.len() && b[j] != b',' && b[j] != b' ' && b[j] != b'\t' {
                    j += 1;
                }
                value.push_str(&s[vs..j]);
            }
            if let Some((_, params)) = current.as_mut() {
                params.insert(token.to_ascii_lowercase(), value);
            }
            i = j.min(b.len());
        } else {
            // A new scheme (possibly followed by token68, which Digest does not use).
            if let Some((true, params)) = current.take() {
                out.push(params);
            }
            current = Some((token.eq_ignore_ascii_case("digest"), HashMap::new()));
        }
    }
    if let Some((true, params)) = current {
        out.push(params);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn parsed(challenge: &'static str) -> Vec<HashMap<String, String>> {
        let mut headers = HeaderMap::new();
        headers.insert(
            reqwest::header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
        challenges(&headers)
    }

    const GET_INDEX: Request<'static> = Request {
        method: "GET",
        uri: "/dir/index.html",
        body: b"",
    };

    fn response_of(header: &str) -> &str {
        let start = header.find("response=\"").map_or(0, |i| i + 10);
        &header[start..start + header[start..].find('"').unwrap_or(0)]
    }

    #[test]
    fn rfc2617_example() {
        // RFC 2617 §3.5.
        let c = parsed(
            "Digest realm=\"testrealm@host.com\", qop=\"auth,auth-int\", nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"",
        );
        let v = respond(&c, "Mufasa", "Circle Of Life", &GET_INDEX, "0a4f113b").unwrap();
        assert_eq!(
            v,
            "Digest username=\"Mufasa\", realm=\"testrealm@host.com\", uri=\"/dir/index.html\", algorithm=MD5, nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", qop=auth, nc=00000001, cnonce=\"0a4f113b\", response=\"6629fae49393a05397450978507c4ef1\", opaque=\"5ccc069c403ebaf9f0171e9517f40e41\""
        );
    }

    #[test]
    fn rfc7616_examples() {
        // RFC 7616 §3.9.1: the same exchange with MD5 and with SHA-256.
        let cnonce = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";
        let md5 = parsed(
            "Digest realm=\"http-auth@example.org\", qop=\"auth, auth-int\", algorithm=MD5, nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\", opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\"",
        );
        assert_eq!(md5[0]["realm"], "http-auth@example.org");
        assert_eq!(md5[0]["qop"], "auth, auth-int");
        let v = respond(&md5, "Mufasa", "Circle of Life", &GET_INDEX, cnonce).unwrap();
        assert_eq!(response_of(&v), "8ca523f5e9506fed4657c9700eebdbec");
        let sha = parsed(
            "Digest realm=\"http-auth@example.org\", qop=\"auth, auth-int\", algorithm=SHA-256, nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\", opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\"",
        );
        let v = respond(&sha, "Mufasa", "Circle of Life", &GET_INDEX, cnonce).unwrap();
        assert_eq!(
            response_of(&v),
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
        assert!(v.contains("algorithm=SHA-256, "), "{v}");
    }

    #[test]
    fn without_qop() {
        // RFC 2069's form: response = H(HA1:nonce:HA2).
        let c = parsed(
            "Digest realm=\"testrealm@host.com\", nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\"",
        );
        let v = respond(&c, "Mufasa", "Circle Of Life", &GET_INDEX, "unused").unwrap();
        assert_eq!(response_of(&v), "670fd8c2df070c60b045671b8b24ff02");
        assert!(!v.contains("qop") && !v.contains("cnonce"), "{v}");
    }

    #[test]
    fn sess_auth_int_and_userhash() {
        // Expected values computed independently (Python's hashlib).
        let c = parsed(
            "Digest realm=\"api@example.org\", qop=\"auth-int\", algorithm=SHA-256-sess, nonce=\"abc123\", userhash=true",
        );
        let req = Request {
            method: "POST",
            uri: "/api?x=1",
            body: br#"{"a":1}"#,
        };
        let v = respond(&c, "Mufasa", "Circle Of Life", &req, "0a4f113b").unwrap();
        assert_eq!(
            response_of(&v),
            "18729747750424846ecb8bd75e00e4091b5339fb202147950b0002ef5056ca15"
        );
        assert!(
            v.starts_with(
                "Digest username=\"0a9ed318a424c7024ff890c5575b3c3769cea2f13ccc6c22410f516c68249d4d\""
            ),
            "{v}"
        );
        assert!(v.ends_with(", userhash=true"), "{v}");
    }

    #[test]
    fn first_known_algorithm_wins_and_unknown_ones_are_refused() {
        let mut headers = HeaderMap::new();
        for c in [
            "Digest realm=\"r\", nonce=\"n1\", algorithm=SHA-512-256",
            "Digest realm=\"r\", nonce=\"n2\", algorithm=SHA-256",
        ] {
            headers.append(
                reqwest::header::WWW_AUTHENTICATE,
                HeaderValue::from_static(c),
            );
        }
        let v = respond(&challenges(&headers), "u", "p", &GET_INDEX, "c").unwrap();
        assert!(v.contains("nonce=\"n2\""), "{v}");

        let e = respond(
            &parsed("Digest realm=\"r\", nonce=\"n\", algorithm=SHA-512-256"),
            "u",
            "p",
            &GET_INDEX,
            "c",
        )
        .unwrap_err();
        assert_eq!(e.status, 401);
        assert!(e.detail.unwrap_or_default().contains("SHA-512-256"));
        let e = respond(&parsed("Digest realm=\"r\""), "u", "p", &GET_INDEX, "c").unwrap_err();
        assert!(e.detail.unwrap_or_default().contains("no nonce"));
        let e = respond(
            &parsed("Digest nonce=\"n\", qop=\"auth-conf\""),
            "u",
            "p",
            &GET_INDEX,
            "c",
        )
        .unwrap_err();
        assert!(e.detail.unwrap_or_default().contains("auth-conf"));
    }

    #[test]
    fn quotes_are_escaped_in_the_answer() {
        let c = parsed("Digest realm=\"a\\\"b\", nonce=\"n\"");
        assert_eq!(c[0]["realm"], "a\"b");
        let v = respond(&c, "x\"y", "p", &GET_INDEX, "c").unwrap();
        assert!(
            v.starts_with("Digest username=\"x\\\"y\", realm=\"a\\\"b\""),
            "{v}"
        );
    }

    #[test]
    fn challenge_parser_survives_garbage() {
        for s in [
            "",
            "Digest",
            "Digest realm=",
            "Digest realm=\"x",
            "Basic realm=\"a\", Digest nonce=n",
            "==,,\"\\",
            "Bearer abc==, Digest nonce=\"q\"",
            "Digest réalm=\"é\", nonce=ü, \u{1F600}=x",
            "Digest nonce=\"\\",
        ] {
            let _ = parse_challenges(s);
        }
        let c = parse_challenges("Basic realm=\"a\", Digest nonce=n, realm=\"r\"");
        assert_eq!(c.len(), 1);
        assert_eq!(c[0]["nonce"], "n");
        assert_eq!(c[0]["realm"], "r");
        let c = parse_challenges("Bearer abc==, Digest nonce=\"q\"");
        assert_eq!(c.len(), 1);
        assert_eq!(c[0]["nonce"], "q");
        assert!(parse_challenges("Basic realm=\"a\"").is_empty());
    }
}
