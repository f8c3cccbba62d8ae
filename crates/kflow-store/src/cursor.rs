//! The opaque pagination cursor of [`crate::Store::list_instances`].
//!
//! A cursor names the last instance of a page by its sort key `(created_ms, id)`; the next page
//! continues strictly after it in `created_ms DESC, id DESC` order, so rows inserted meanwhile
//! never shift a page (no duplicates, no gaps). It is `base64url("{created_ms}:{id}")` without
//! padding: safe in a URL query, and clients must not build one themselves.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::{Result, StoreError};

/// The message of the [`StoreError::Db`] returned for a malformed cursor (callers map it to 400).
pub const INVALID_CURSOR: &str = "invalid cursor";

/// Longest cursor accepted (an id of a few hundred bytes fits easily).
const MAX_LEN: usize = 2048;

/// Encodes the sort key of the last instance of a page.
pub fn encode(created_ms: i64, id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{created_ms}:{id}"))
}

/// Decodes a cursor made by [`encode`]; anything else is `StoreError::Db("invalid cursor")`.
pub fn decode(cursor: &str) -> Result<(i64, String)> {
    let invalid = || StoreError::Db(INVALID_CURSOR.to_string());
    if cursor.is_empty() || cursor.len() > MAX_LEN {
        return Err(invalid());
    }
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let (ms, id) = text.split_once(':').ok_or_else(invalid)?;
    if ms.is_empty()
        || !ms
            .bytes()
            .enumerate()
            .all(|(i, b)| b.is_ascii_digit() || (i == 0 && b == b'-'))
    {
        return Err(invalid());
    }
    let ms: i64 = ms.parse().map_err(|_| invalid())?;
    if id.is_empty() {
        return Err(invalid());
    }
    Ok((ms, id.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for (ms, id) in [
            (0, "a"),
            (1_700_000_000_000, "0190f5a4-7c4e-7b1a-9d7e-0123456789ab"),
            (-5, "x:y:z"),
            (i64::MAX, "é"),
        ] {
            let c = encode(ms, id);
            assert!(
                c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{c}"
            );
            assert_eq!(decode(&c).unwrap(), (ms, id.to_string()));
        }
    }

    #[test]
    fn rejects_malformed() {
        let bad = [
            String::new(),
            "not base64!".to_string(),
            URL_SAFE_NO_PAD.encode("no-colon"),
            URL_SAFE_NO_PAD.encode("12:"),
            URL_SAFE_NO_PAD.encode(":id"),
            URL_SAFE_NO_PAD.encode("+12:id"),
            URL_SAFE_NO_PAD.encode("1x:id"),
            URL_SAFE_NO_PAD.encode("99999999999999999999:id"),
            URL_SAFE_NO_PAD.encode([0xff, 0xfe, b':', b'a']),
            "A".repeat(MAX_LEN + 4),
        ];
        for c in bad {
            match decode(&c) {
                Err(StoreError::Db(m)) => assert_eq!(m, INVALID_CURSOR),
                other => panic!("{c:?}: {other:?}"),
            }
        }
    }
}
