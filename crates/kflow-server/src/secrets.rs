//! Secrets of namespaces, encrypted at rest.
//!
//! Values are sealed with XChaCha20-Poly1305 under a 256-bit master key: the key file
//! `<data dir>/master.key` (base64, created 0600 on the first start) or `KFLOW_MASTER_KEY`.
//! The namespace and name are the AEAD's associated data, so a ciphertext moved to another
//! secret's row does not open. Rows carry the id of the key that sealed them; rotation seals
//! every row again under a new key in one transaction, then replaces the key file (the old one
//! is kept beside it as `master.key.<id>` until the operator removes it).
//!
//! Decrypted values live in memory only, per namespace; an instance's `$secrets` is the
//! server's secrets file overlaid with its namespace's secrets.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use kflow_store::{SecretRow, Store};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The key of a sealed JSON value: `{"sealed": "<key id>:<nonce>:<ciphertext>"}`.
const SEALED: &str = "sealed";

/// Values shorter than this are not redacted (a one-letter secret would blank every text).
pub const MIN_REDACTED: usize = 4;

/// What a redacted value becomes.
pub const REDACTED: &str = "***";

/// Replaces every occurrence of `values` (longest first) in the strings of `v`, keys included.
pub fn redact(v: &mut Value, values: &[String]) {
    match v {
        Value::String(s) => {
            if values.iter().any(|x| s.contains(x.as_str())) {
                for x in values {
                    if s.contains(x.as_str()) {
                        *s = s.replace(x.as_str(), REDACTED);
                    }
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| redact(x, values)),
        Value::Object(m) => {
            if m.keys()
                .any(|k| values.iter().any(|x| k.contains(x.as_str())))
            {
                let old = std::mem::take(m);
                for (mut k, mut x) in old {
                    for s in values {
                        if k.contains(s.as_str()) {
                            k = k.replace(s.as_str(), REDACTED);
                        }
                    }
                    redact(&mut x, values);
                    m.insert(k, x);
                }
            } else {
                m.values_mut().for_each(|x| redact(x, values));
            }
        }
        _ => {}
    }
}

/// The longest secret value accepted.
pub const MAX_VALUE: usize = 64 * 1024;

struct Key {
    id: String,
    cipher: XChaCha20Poly1305,
}

impl Key {
    fn new(bytes: &[u8; 32]) -> Key {
        let id = kflow_store::security::hex(&Sha256::digest(bytes)[..6]);
        Key {
            id,
            cipher: XChaCha20Poly1305::new(bytes.into()),
        }
    }

    fn seal(&self, ns: &str, name: &str, value: &str, now_ms: i64) -> Result<SecretRow, String> {
        let mut nonce = [0u8; 24];
        getrandom::fill(&mut nonce).map_err(|e| format!("the OS random generator failed: {e}"))?;
        let aad = format!("{ns}\n{name}");
        let ct = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: value.as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| "encryption failed".to_string())?;
        Ok(SecretRow {
            namespace: ns.into(),
            name: name.into(),
            key_id: self.id.clone(),
            nonce: B64.encode(nonce),
            ciphertext: B64.encode(ct),
            updated_ms: now_ms,
        })
    }

    fn open(&self, row: &SecretRow) -> Result<String, String> {
        let what = || format!("secret {}/{}", row.namespace, row.name);
        let nonce = B64
            .decode(&row.nonce)
            .ok()
            .filter(|n| n.len() == 24)
            .ok_or_else(|| format!("{}: a malformed nonce", what()))?;
        let ct = B64
            .decode(&row.ciphertext)
            .map_err(|_| format!("{}: a malformed ciphertext", what()))?;
        let aad = format!("{}\n{}", row.namespace, row.name);
        let pt = self
            .cipher
            .decrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &ct,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| {
                format!(
                    "{}: does not decrypt with key {} (altered, or sealed under another key)",
                    what(),
                    self.id
                )
            })?;
        String::from_utf8(pt).map_err(|_| format!("{}: not UTF-8", what()))
    }
}

/// Where the master key comes from.
#[derive(Debug, Clone)]
pub enum KeySource {
    File(PathBuf),
    /// `KFLOW_MASTER_KEY` (base64 of 32 bytes); rotation is then the operator's job.
    Env(String),
}

pub struct Vault {
    store: Arc<dyn Store>,
    key: RwLock<Key>,
    /// Keys replaced by rotation (`master.key.<id>` files), to open what they sealed.
    previous: RwLock<Vec<Key>>,
    source: KeySource,
    /// Decrypted values by namespace, then name.
    values: RwLock<HashMap<String, BTreeMap<String, String>>>,
}

fn read_key(source: &KeySource) -> Result<[u8; 32], String> {
    let (text, from) = match source {
        KeySource::Env(v) => (v.clone(), "KFLOW_MASTER_KEY".to_string()),
        KeySource::File(p) => (
            std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read the master key {}: {e}", p.display()))?,
            p.display().to_string(),
        ),
    };
    let bytes = B64
        .decode(text.trim())
        .map_err(|_| format!("{from}: the master key is not base64"))?;
    bytes
        .try_into()
        .map_err(|_| format!("{from}: the master key must be 32 bytes (base64 of 32 bytes)"))
}

/// Writes `bytes` as a new key file (0600), atomically.
fn write_key(path: &Path, bytes: &[u8; 32]) -> Result<(), String> {
    use std::io::Write;
    let tmp = path.with_extension("new");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let fail = |e: std::io::Error| format!("cannot write the master key {}: {e}", tmp.display());
    let mut f = opts.open(&tmp).map_err(fail)?;
    f.write_all(format!("{}\n", B64.encode(bytes)).as_bytes())
        .map_err(fail)?;
    f.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, path)
        .map_err(|e| format!("cannot install the master key {}: {e}", path.display()))
}

fn random_key() -> Result<[u8; 32], String> {
    let mut k = [0u8; 32];
    getrandom::fill(&mut k).map_err(|e| format!("the OS random generator failed: {e}"))?;
    Ok(k)
}

impl Vault {
    /// Opens the vault: the key from the environment, else the key file (created on first
    /// use), and every stored secret decrypted — a row that does not decrypt stops the start
    /// with its name (a wrong key must not look like missing secrets).
    pub fn open(store: Arc<dyn Store>, data_dir: &Path) -> Result<Vault, String> {
        let source = match std::env::var("KFLOW_MASTER_KEY")
            .ok()
            .filter(|k| !k.is_empty())
        {
            Some(k) => KeySource::Env(k),
            None => KeySource::File(data_dir.join("master.key")),
        };
        if let KeySource::File(p) = &source
            && !p.exists()
        {
            write_key(p, &random_key()?)?;
        }
        Vault::with_source(store, source)
    }

    pub fn with_source(store: Arc<dyn Store>, source: KeySource) -> Result<Vault, String> {
        let key = Key::new(&read_key(&source)?);
        let rows = store
            .secrets()
            .map_err(|e| format!("reading secrets: {e}"))?;
        let mut values: HashMap<String, BTreeMap<String, String>> = HashMap::new();
        for r in &rows {
            let v = key.open(r)?;
            values
                .entry(r.namespace.clone())
                .or_default()
                .insert(r.name.clone(), v);
        }
        let mut previous = Vec::new();
        if let KeySource::File(p) = &source
            && let (Some(dir), Some(name)) = (p.parent(), p.file_name().and_then(|n| n.to_str()))
            && let Ok(entries) = std::fs::read_dir(dir)
        {
            for e in entries.flatten() {
                let f = e.file_name();
                let Some(f) = f.to_str() else { continue };
                if f.starts_with(&format!("{name}."))
                    && !f.ends_with(".next")
                    && !f.ends_with(".new")
                    && let Ok(bytes) = read_key(&KeySource::File(e.path()))
                {
                    previous.push(Key::new(&bytes));
                }
            }
        }
        Ok(Vault {
            store,
            key: RwLock::new(key),
            previous: RwLock::new(previous),
            source,
            values: RwLock::new(values),
        })
    }

    /// An instance's `$secrets`: `base` (the secrets file) overlaid with its namespace's.
    /// Reads the secrets again (several nodes share one database: another node may have set,
    /// removed or re-sealed some). A row this node's keys cannot open keeps its old value.
    pub fn reload(&self) -> Result<(), String> {
        let rows = self
            .store
            .secrets()
            .map_err(|e| format!("reading secrets: {e}"))?;
        let mut values: HashMap<String, BTreeMap<String, String>> = HashMap::new();
        {
            let key = self.key.read().unwrap_or_else(|p| p.into_inner());
            let previous = self.previous.read().unwrap_or_else(|p| p.into_inner());
            let old = self.values.read().unwrap_or_else(|p| p.into_inner());
            for r in &rows {
                let opened = key
                    .open(r)
                    .or_else(|e| previous.iter().find_map(|k| k.open(r).ok()).ok_or(e));
                let v = match opened {
                    Ok(v) => v,
                    Err(e) => match old.get(&r.namespace).and_then(|m| m.get(&r.name)) {
                        Some(v) => v.clone(),
                        None => {
                            tracing::warn!(namespace = %r.namespace, name = %r.name, error = %e,
                                "a secret cannot be opened with this node's master key (do the nodes share KFLOW_MASTER_KEY?)");
                            continue;
                        }
                    },
                };
                values
                    .entry(r.namespace.clone())
                    .or_default()
                    .insert(r.name.clone(), v);
            }
        }
        *self.values.write().unwrap_or_else(|p| p.into_inner()) = values;
        Ok(())
    }

    pub fn for_namespace(&self, base: &Value, ns: &str) -> Value {
        let values = self.values.read().unwrap_or_else(|p| p.into_inner());
        match values.get(ns) {
            None => base.clone(),
            Some(own) => {
                let mut m: Map<String, Value> = base.as_object().cloned().unwrap_or_default();
                for (k, v) in own {
                    m.insert(k.clone(), Value::String(v.clone()));
                }
                Value::Object(m)
            }
        }
    }

    /// Every value held (for redaction).
    pub fn all_values(&self) -> Vec<String> {
        let values = self.values.read().unwrap_or_else(|p| p.into_inner());
        values.values().flat_map(|m| m.values().cloned()).collect()
    }

    pub fn set(&self, ns: &str, name: &str, value: &str, now_ms: i64) -> Result<(), String> {
        if value.len() > MAX_VALUE {
            return Err(format!("a secret holds at most {MAX_VALUE} bytes"));
        }
        let row = self
            .key
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .seal(ns, name, value, now_ms)?;
        self.store
            .put_secrets(&[row])
            .map_err(|e| format!("the store failed: {e}"))?;
        self.values
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(ns.into())
            .or_default()
            .insert(name.into(), value.into());
        Ok(())
    }

    pub fn remove(&self, ns: &str, name: &str) -> Result<bool, String> {
        let gone = self
            .store
            .delete_secret(ns, name)
            .map_err(|e| format!("the store failed: {e}"))?;
        if let Some(m) = self
            .values
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(ns)
        {
            m.remove(name);
        }
        Ok(gone)
    }

    /// Names (never values) with their update time, per namespace.
    pub fn names(&self) -> Vec<(String, String, i64)> {
        match self.store.secrets() {
            Ok(rows) => rows
                .into_iter()
                .map(|r| (r.namespace, r.name, r.updated_ms))
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Seals every secret under a new key and installs it; returns the new key's id. The old
    /// key file is kept as `master.key.<old id>`.
    pub fn rotate(&self, now_ms: i64) -> Result<String, String> {
        let KeySource::File(path) = &self.source else {
            return Err(
                "the master key comes from KFLOW_MASTER_KEY: rotate it there (set the new key \
                 and restart with both)"
                    .into(),
            );
        };
        let bytes = random_key()?;
        let new = Key::new(&bytes);
        let mut key = self.key.write().unwrap_or_else(|p| p.into_inner());
        let values = self.values.read().unwrap_or_else(|p| p.into_inner());
        let mut rows = Vec::new();
        for (ns, m) in values.iter() {
            for (name, v) in m {
                rows.push(new.seal(ns, name, v, now_ms)?);
            }
        }
        drop(values);
        // The old key stays on disk until the rows are sealed under the new one.
        let old_copy = path.with_extension(format!("key.{}", key.id));
        std::fs::copy(path, &old_copy)
            .map_err(|e| format!("cannot keep the old key as {}: {e}", old_copy.display()))?;
        let staged = path.with_extension("key.next");
        write_key(&staged, &bytes)?;
        self.store
            .put_secrets(&rows)
            .map_err(|e| format!("the store failed (nothing changed): {e}"))?;
        std::fs::rename(&staged, path)
            .map_err(|e| format!("cannot install the new key {}: {e}", path.display()))?;
        let id = new.id.clone();
        let old = std::mem::replace(&mut *key, new);
        self.previous
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(old);
        Ok(id)
    }

    /// Seals a JSON value bound to `context` (e.g. a work row's instance and effect): what the
    /// engine keeps for itself but must not keep in clear (resolved headers, environments).
    pub fn seal_value(&self, context: &str, v: &Value) -> Value {
        let key = self.key.read().unwrap_or_else(|p| p.into_inner());
        let mut nonce = [0u8; 24];
        if getrandom::fill(&mut nonce).is_err() {
            return v.clone();
        }
        let text = v.to_string();
        match key.cipher.encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: text.as_bytes(),
                aad: context.as_bytes(),
            },
        ) {
            Ok(ct) => serde_json::json!({
                SEALED: format!("{}:{}:{}", key.id, B64.encode(nonce), B64.encode(ct))
            }),
            Err(_) => v.clone(),
        }
    }

    /// Whether `v` is a sealed value.
    pub fn is_sealed(v: &Value) -> bool {
        v.as_object()
            .is_some_and(|m| m.len() == 1 && m.get(SEALED).is_some_and(Value::is_string))
    }

    /// Opens what [`seal_value`](Self::seal_value) sealed (any value not sealed is returned
    /// as it is: rows written before sealing existed).
    pub fn unseal_value(&self, context: &str, v: &Value) -> Result<Value, String> {
        let Some(sealed) = v
            .as_object()
            .filter(|m| m.len() == 1)
            .and_then(|m| m.get(SEALED))
        else {
            return Ok(v.clone());
        };
        let text = sealed
            .as_str()
            .ok_or("a sealed value that is not a string")?;
        let mut parts = text.splitn(3, ':');
        let (Some(id), Some(nonce), Some(ct)) = (parts.next(), parts.next(), parts.next()) else {
            return Err("a malformed sealed value".into());
        };
        let nonce = B64
            .decode(nonce)
            .ok()
            .filter(|n| n.len() == 24)
            .ok_or("a malformed nonce")?;
        let ct = B64.decode(ct).map_err(|_| "a malformed ciphertext")?;
        let open = |k: &Key| {
            k.cipher
                .decrypt(
                    XNonce::from_slice(&nonce),
                    Payload {
                        msg: &ct,
                        aad: context.as_bytes(),
                    },
                )
                .ok()
        };
        let current = self.key.read().unwrap_or_else(|p| p.into_inner());
        let plain = if current.id == id {
            open(&current)
        } else {
            let prev = self.previous.read().unwrap_or_else(|p| p.into_inner());
            prev.iter().find(|k| k.id == id).and_then(open)
        }
        .ok_or_else(|| {
            format!("sealed under key {id}, which does not open it (missing or altered)")
        })?;
        serde_json::from_slice(&plain).map_err(|e| format!("a sealed value that is not JSON: {e}"))
    }

    pub fn key_id(&self) -> String {
        self.key
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .id
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> Arc<dyn Store> {
        Arc::new(kflow_store::sqlite::SqliteStore::open_in_memory().unwrap())
    }

    #[test]
    fn values_are_sealed_bound_to_their_name_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let s = store();
        let v = Vault::open(s.clone(), dir.path()).unwrap();
        v.set("team", "db", "hunter2-very-secret", 1).unwrap();
        let rows = s.secrets().unwrap();
        assert!(!rows[0].ciphertext.contains("hunter2"));
        assert!(
            !B64.decode(&rows[0].ciphertext)
                .unwrap()
                .windows(7)
                .any(|w| w == b"hunter2")
        );
        // Moved to another name: does not open.
        let mut moved = rows[0].clone();
        moved.name = "other".into();
        s.put_secrets(&[moved]).unwrap();
        let e = Vault::open(s.clone(), dir.path()).err().expect("refused");
        assert!(e.contains("team/other"), "{e}");
        s.delete_secret("team", "other").unwrap();
        let again = Vault::open(s.clone(), dir.path()).unwrap();
        let base = serde_json::json!({"global": "g", "db": "from-file"});
        assert_eq!(
            again.for_namespace(&base, "team"),
            serde_json::json!({"global": "g", "db": "hunter2-very-secret"})
        );
        assert_eq!(again.for_namespace(&base, "ops"), base);
        // Another key: a clear refusal, not missing secrets.
        let other = tempfile::tempdir().unwrap();
        let e = Vault::open(s, other.path()).err().expect("refused");
        assert!(e.contains("does not decrypt"), "{e}");
    }

    #[test]
    fn sealed_values_open_in_their_context_only_and_after_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let v = Vault::open(store(), dir.path()).unwrap();
        let effect = serde_json::json!({"headers": {"authorization": "Bearer hunter2-xyz"}});
        let sealed = v.seal_value("i1/7", &effect);
        assert!(!sealed.to_string().contains("hunter2"));
        assert_eq!(v.unseal_value("i1/7", &sealed).unwrap(), effect);
        assert!(
            v.unseal_value("i1/8", &sealed).is_err(),
            "moved to another row"
        );
        assert_eq!(
            v.unseal_value("x", &effect).unwrap(),
            effect,
            "plain rows pass"
        );
        v.rotate(5).unwrap();
        assert_eq!(v.unseal_value("i1/7", &sealed).unwrap(), effect);
        // And after a restart, from the kept key file.
        let again = Vault::open(v.store.clone(), dir.path()).unwrap();
        assert_eq!(again.unseal_value("i1/7", &sealed).unwrap(), effect);
    }

    #[test]
    fn rotation_reseals_every_secret_under_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let s = store();
        let v = Vault::open(s.clone(), dir.path()).unwrap();
        v.set("a", "x", "one", 1).unwrap();
        v.set("b", "y", "two", 1).unwrap();
        let old = v.key_id();
        let new = v.rotate(2).unwrap();
        assert_ne!(old, new);
        assert!(s.secrets().unwrap().iter().all(|r| r.key_id == new));
        assert!(dir.path().join(format!("master.key.{old}")).exists());
        let reopened = Vault::open(s, dir.path()).unwrap();
        assert_eq!(reopened.key_id(), new);
        assert_eq!(
            reopened.for_namespace(&serde_json::json!({}), "b"),
            serde_json::json!({"y": "two"})
        );
    }
}
