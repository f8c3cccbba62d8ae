//! What the store keeps for access control: API tokens (only the SHA-256 of their secret) and
//! the audit trail, an append-only list of entries chained by SHA-256.
//!
//! Chain: entry `n` stores `prev_hash` (the hash of entry `n - 1`, or [`GENESIS`] for the first)
//! and `hash = SHA-256(prev_hash ‖ "\n" ‖ canonical(n))`, where `canonical` is the JSON array of
//! its fields in a fixed order (seq included). Editing an entry breaks its own hash; removing or
//! reordering entries breaks the sequence or the links; truncating the tail is found by
//! comparing with a head (seq, hash) exported earlier. The store computes the chain inside the
//! appending transaction, so concurrent writers cannot fork it.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The `prev_hash` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An API token as stored: never its secret, only the secret's SHA-256 (hex).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRow {
    /// Public part of the token, unique; the token is `kf_<id>_<secret>`.
    pub id: String,
    /// Human name, unique among tokens not revoked.
    pub name: String,
    pub role: String,
    /// Namespaces the token may act in; `["*"]` is every namespace.
    pub namespaces: Vec<String>,
    pub secret_sha256: String,
    pub created_ms: i64,
    pub created_by: String,
    pub expires_ms: Option<i64>,
    pub revoked_ms: Option<i64>,
}

/// A secret as stored: encrypted (the store never sees its value).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretRow {
    pub namespace: String,
    pub name: String,
    /// Which master key encrypted it (the first bytes of the key's hash, hex).
    pub key_id: String,
    /// Nonce and ciphertext, base64.
    pub nonce: String,
    pub ciphertext: String,
    pub updated_ms: i64,
}

/// One audited request or change, as recorded (before the chain is applied).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at_ms: i64,
    /// Who: the token's name (`anonymous` without one, `server` for the server itself).
    pub actor: String,
    /// What: e.g. `instances.start`, `tokens.create`, `auth.denied`.
    pub action: String,
    /// Which resource: the request path or an id.
    pub resource: String,
    /// The namespace concerned, when there is one.
    pub namespace: Option<String>,
    /// From where: the peer's address.
    pub source: String,
    /// The outcome: the HTTP status, and for a denial the reason.
    pub result: String,
}

/// An entry as stored: its place in the chain and its hashes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRow {
    pub seq: i64,
    #[serde(flatten)]
    pub entry: AuditEntry,
    pub prev_hash: String,
    pub hash: String,
}

/// Which audit entries to list.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub actor: Option<String>,
    /// Entries whose action starts with this.
    pub action: Option<String>,
    pub namespace: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
}

/// The hash of entry `seq` following `prev_hash`.
pub fn chain_hash(prev_hash: &str, seq: i64, e: &AuditEntry) -> String {
    let canonical = serde_json::json!([
        seq,
        e.at_ms,
        e.actor,
        e.action,
        e.resource,
        e.namespace,
        e.source,
        e.result
    ]);
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(b"\n");
    h.update(canonical.to_string().as_bytes());
    hex(&h.finalize())
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Where and how the chain is broken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainBreak {
    /// The first entry that does not verify (for a truncation, the exported head's seq).
    pub seq: i64,
    pub reason: String,
}

/// Checks entries in seq order, one at a time (so that a long chain streams).
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    next_seq: i64,
    prev_hash: String,
    checked: u64,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        ChainVerifier {
            next_seq: 1,
            prev_hash: GENESIS.to_string(),
            checked: 0,
        }
    }
}

impl ChainVerifier {
    pub fn check(&mut self, row: &AuditRow) -> Result<(), ChainBreak> {
        let at = |reason: String| ChainBreak {
            seq: self.next_seq,
            reason,
        };
        if row.seq < self.next_seq {
            return Err(at(format!(
                "entry {} comes after entry {}: entries were reordered or duplicated",
                row.seq,
                self.next_seq - 1
            )));
        }
        if row.seq > self.next_seq {
            return Err(at(format!(
                "entries {} to {} are missing: removed",
                self.next_seq,
                row.seq - 1
            )));
        }
        if row.prev_hash != self.prev_hash {
            return Err(at(format!(
                "entry {} does not link to the entry before it (prev_hash {} instead of {}): \
                 an entry was removed, inserted or reordered",
                row.seq,
                short(&row.prev_hash),
                short(&self.prev_hash)
            )));
        }
        let expected = chain_hash(&row.prev_hash, row.seq, &row.entry);
        if row.hash != expected {
            return Err(at(format!(
                "entry {} was altered: its content hashes to {} but {} is recorded",
                row.seq,
                short(&expected),
                short(&row.hash)
            )));
        }
        self.next_seq += 1;
        self.prev_hash = row.hash.clone();
        self.checked += 1;
        Ok(())
    }

    /// After every row: checks that the chain reaches an exported head (`seq`, `hash`).
    pub fn reaches(
        &self,
        seq: i64,
        hash: &str,
        seen_hash_at_seq: Option<&str>,
    ) -> Result<(), ChainBreak> {
        if seq > self.next_seq - 1 {
            return Err(ChainBreak {
                seq,
                reason: format!(
                    "the chain ends at entry {} but the exported head is entry {seq}: the tail \
                     was truncated",
                    self.next_seq - 1
                ),
            });
        }
        match seen_hash_at_seq {
            Some(h) if h == hash => Ok(()),
            Some(h) => Err(ChainBreak {
                seq,
                reason: format!(
                    "entry {seq} has hash {} but the exported head says {}: the chain was \
                     rewritten",
                    short(h),
                    short(hash)
                ),
            }),
            None => Err(ChainBreak {
                seq,
                reason: format!("entry {seq} of the exported head was not seen"),
            }),
        }
    }

    /// How many entries verified so far.
    pub fn checked(&self) -> u64 {
        self.checked
    }

    /// The last verified (seq, hash): the head to export.
    pub fn head(&self) -> (i64, &str) {
        (self.next_seq - 1, &self.prev_hash)
    }
}

fn short(h: &str) -> &str {
    h.get(..12).unwrap_or(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: i64) -> AuditEntry {
        AuditEntry {
            at_ms: 1000 + i,
            actor: "admin".into(),
            action: "instances.start".into(),
            resource: format!("/api/v1/instances/{i}"),
            namespace: Some("ns".into()),
            source: "127.0.0.1:1".into(),
            result: "201".into(),
        }
    }

    fn chain(n: i64) -> Vec<AuditRow> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|seq| {
                let e = entry(seq);
                let hash = chain_hash(&prev, seq, &e);
                let row = AuditRow {
                    seq,
                    entry: e,
                    prev_hash: prev.clone(),
                    hash: hash.clone(),
                };
                prev = hash;
                row
            })
            .collect()
    }

    fn verify(rows: &[AuditRow]) -> Result<ChainVerifier, ChainBreak> {
        let mut v = ChainVerifier::default();
        for r in rows {
            v.check(r)?;
        }
        Ok(v)
    }

    #[test]
    fn an_intact_chain_verifies_and_tampering_is_named() {
        let rows = chain(5);
        assert_eq!(verify(&rows).unwrap().checked(), 5);

        let mut edited = rows.clone();
        edited[2].entry.actor = "mallory".into();
        let b = verify(&edited).unwrap_err();
        assert_eq!(b.seq, 3);
        assert!(b.reason.contains("altered"), "{}", b.reason);

        let mut removed = rows.clone();
        removed.remove(1);
        let b = verify(&removed).unwrap_err();
        assert_eq!(b.seq, 2);
        assert!(b.reason.contains("missing"), "{}", b.reason);

        let mut swapped = rows.clone();
        swapped.swap(1, 3);
        assert_eq!(verify(&swapped).unwrap_err().seq, 2);
    }

    #[test]
    fn a_truncated_tail_is_found_against_an_exported_head() {
        let rows = chain(5);
        let head = (rows[4].seq, rows[4].hash.clone());
        let v = verify(&rows[..3]).unwrap();
        let b = v.reaches(head.0, &head.1, None).unwrap_err();
        assert!(b.reason.contains("truncated"), "{}", b.reason);
        let v = verify(&rows).unwrap();
        v.reaches(head.0, &head.1, Some(&rows[4].hash)).unwrap();
        assert!(
            v.reaches(head.0, &"f".repeat(64), Some(&rows[4].hash))
                .is_err()
        );
    }
}
