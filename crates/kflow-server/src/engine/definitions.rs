//! Definitions: registering workflow documents, reading them back, deprecating versions, and
//! the checks a start makes against the version it would run.

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use kflow_dsl::Workflow;
use kflow_store::{Definition, PutDefinition};

use super::{Engine, EngineError, Result, canonical_hash, concurrency};

#[derive(Debug, Clone, Serialize)]
pub struct Registered {
    pub namespace: String,
    pub name: String,
    pub version: String,
    /// `created` or `unchanged`.
    pub outcome: &'static str,
}

/// A document that would not register: what kind of problem (the message of the API's error)
/// and each problem at its line and column.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub message: &'static str,
    pub diagnostics: Vec<kflow_dsl::Diagnostic>,
}

/// Everything registering checks, without registering: the document (DSL, schema, references,
/// expressions), its schedule and its concurrency settings. Every problem comes with its line
/// and column (the engine's own checks at the place of the setting they concern).
pub fn check(source: &[u8]) -> std::result::Result<Workflow, Rejected> {
    let wf = kflow_dsl::load(source).map_err(|diagnostics| Rejected {
        message: "the workflow definition is invalid",
        diagnostics,
    })?;
    let at = |pointer: &str, message: String| {
        let pos = kflow_dsl::node::parse(source, &kflow_dsl::node::Limits::default())
            .map(|root| root.at_pointer(pointer).pos)
            .unwrap_or(kflow_dsl::node::Pos { line: 1, col: 1 });
        kflow_dsl::Diagnostic::new(pos.line, pos.col, message)
    };
    if let Err(details) = crate::schedule::check(&wf) {
        return Err(Rejected {
            message: "the workflow's schedule is invalid",
            diagnostics: details.into_iter().map(|d| at("/schedule", d)).collect(),
        });
    }
    if let Err(m) = concurrency::spec(&wf) {
        return Err(Rejected {
            message: "the workflow's concurrency settings are invalid",
            diagnostics: vec![at("/document/metadata/kflow", m)],
        });
    }
    Ok(wf)
}

impl Engine {
    /// Registers a definition. Same version and content: no-op; same version, other content:
    /// refused. An invalid document is never stored.
    pub async fn register(&self, source: &[u8]) -> Result<Registered> {
        self.register_in(source, |_| true).await
    }

    /// Registers a definition if its namespace passes `may` (the caller's namespaces);
    /// `Forbidden` otherwise, before anything is stored.
    pub async fn register_in(
        &self,
        source: &[u8],
        may: impl FnOnce(&str) -> bool,
    ) -> Result<Registered> {
        let wf = check(source).map_err(|r| EngineError::Invalid {
            message: r.message.into(),
            details: r.diagnostics.iter().map(|d| d.to_string()).collect(),
        })?;
        if !may(&wf.document.namespace) {
            return Err(EngineError::Forbidden(format!(
                "this token may not register workflows in namespace {:?}",
                wf.document.namespace
            )));
        }
        let text = String::from_utf8_lossy(source).into_owned();
        let unknown = unknown_services(&text, &self.shared.config.executor.services);
        if !unknown.is_empty() {
            return Err(EngineError::Invalid {
                message: "the workflow calls services this server does not know".into(),
                details: unknown,
            });
        }
        let d = &wf.document;
        let def = Definition {
            namespace: d.namespace.clone(),
            name: d.name.clone(),
            version: d.version.clone(),
            source: text,
            hash: canonical_hash(&wf.definition),
            deprecated: false,
            created_ms: self.shared.now(),
        };
        let (ns, name, version) = (def.namespace.clone(), def.name.clone(), def.version.clone());
        let outcome = self.blocking(move |s| s.put_definition(&def)).await?;
        match outcome {
            PutDefinition::Created => {
                self.forget_definitions(&ns, &name);
                let key = (ns.clone(), name.clone(), version.clone());
                self.shared
                    .workflows
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, Arc::new(wf));
                if let Some(o) = self.observer() {
                    o.definitions_changed(&ns, &name).await;
                }
                Ok(Registered {
                    namespace: ns,
                    name,
                    version,
                    outcome: "created",
                })
            }
            PutDefinition::Unchanged => Ok(Registered {
                namespace: ns,
                name,
                version,
                outcome: "unchanged",
            }),
            PutDefinition::Conflict { .. } => Err(EngineError::Conflict(format!(
                "{ns}/{name} version {version} is already registered with different content; \
                 registered versions never change: bump document.version (e.g. to a higher patch version)"
            ))),
        }
    }

    pub async fn definitions(&self, namespace: Option<String>) -> Result<Vec<Definition>> {
        self.blocking(move |s| s.list_definitions(namespace.as_deref()))
            .await
    }

    /// One version, or the latest (highest semver) when `version` is None or `latest`.
    pub async fn definition(
        &self,
        ns: &str,
        name: &str,
        version: Option<&str>,
    ) -> Result<Definition> {
        let (n, m) = (ns.to_string(), name.to_string());
        let v = version.filter(|v| *v != "latest").map(str::to_string);
        let key = (n.clone(), m.clone(), v.clone());
        if let Some(d) = self
            .shared
            .definitions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(d.clone());
        }
        let found = self
            .blocking(move |s| s.get_definition(&n, &m, v.as_deref()))
            .await?;
        let Some(def) = found else {
            return Err(EngineError::NotFound(
                self.not_registered(ns, name, version).await,
            ));
        };
        if self.clustered() {
            // Another node may register or deprecate a version at any time: read afresh.
            return Ok(def);
        }
        self.shared
            .definitions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, def.clone());
        Ok(def)
    }

    /// "workflow ns/name@v is not registered", with what is: the versions of that name, or the
    /// names of the same namespace closest to it (a misspelt name gets a suggestion). Only the
    /// namespace asked about is read, which the caller may see.
    async fn not_registered(&self, ns: &str, name: &str, version: Option<&str>) -> String {
        let shown = format!("{ns}/{name}@{}", version.unwrap_or("latest"));
        let mut msg = format!("workflow {shown} is not registered");
        let Ok(defs) = self.definitions(Some(ns.to_string())).await else {
            return msg;
        };
        let mut versions: Vec<&str> = defs
            .iter()
            .filter(|d| d.name == name)
            .map(|d| d.version.as_str())
            .collect();
        if !versions.is_empty() {
            versions.sort_by(|a, b| kflow_store::semver::compare(a, b));
            msg.push_str(&format!("; its versions: {}", versions.join(", ")));
            return msg;
        }
        let mut names: Vec<(usize, &str)> = defs
            .iter()
            .map(|d| (strsim::levenshtein(&d.name, name), d.name.as_str()))
            .filter(|(dist, n)| *dist <= 2.max(name.len() / 3) || n.contains(name))
            .collect();
        names.sort();
        names.dedup_by(|a, b| a.1 == b.1);
        if !names.is_empty() {
            let list: Vec<String> = names
                .iter()
                .take(3)
                .map(|(_, n)| format!("{ns}/{n}"))
                .collect();
            msg.push_str(&format!("; did you mean {}?", list.join(" or ")));
        }
        msg
    }

    fn forget_definitions(&self, ns: &str, name: &str) {
        self.shared
            .definitions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(n, m, _), _| !(n == ns && m == name));
    }

    pub async fn deprecate(
        &self,
        ns: &str,
        name: &str,
        version: &str,
        deprecated: bool,
    ) -> Result<()> {
        let (n, m, v) = (ns.to_string(), name.to_string(), version.to_string());
        let found = self
            .blocking(move |s| s.set_deprecated(&n, &m, &v, deprecated))
            .await?;
        self.forget_definitions(ns, name);
        if found && let Some(o) = self.observer() {
            o.definitions_changed(ns, name).await;
        }
        if found {
            Ok(())
        } else {
            Err(EngineError::NotFound(format!(
                "workflow {ns}/{name}@{version} is not registered"
            )))
        }
    }

    /// The compiled workflow a new instance of `ns/name[@version]` would run, after the
    /// checks every start makes: the version takes new runs ("latest" skips deprecated ones)
    /// and the input matches the input schema.
    pub(super) async fn startable(
        &self,
        ns: &str,
        name: &str,
        version: Option<&str>,
        input: &Value,
    ) -> Result<Arc<Workflow>> {
        let mut def = self.definition(ns, name, version).await?;
        if def.deprecated && version.is_none() {
            // "latest" means the highest version that still takes new runs.
            let (n, m) = (ns.to_string(), name.to_string());
            let all = self.blocking(move |s| s.list_definitions(Some(&n))).await?;
            if let Some(d) = all.into_iter().find(|d| d.name == m && !d.deprecated) {
                def = d;
            }
        }
        if def.deprecated {
            return Err(EngineError::Conflict(format!(
                "{ns}/{name}@{} is deprecated: no new instances can start; use a newer version",
                def.version
            )));
        }
        let wf = self.shared.workflow(ns, name, &def.version)?;
        if let Some(schema) = wf.input.as_ref().and_then(|i| i.schema.as_ref()) {
            schema.check(input).map_err(|errs| EngineError::Invalid {
                message: "the input does not match the workflow's input schema".into(),
                details: errs,
            })?;
        }
        Ok(wf)
    }

    /// The compiled workflow of a registered version (cached).
    pub fn compiled(&self, ns: &str, name: &str, version: &str) -> Result<Arc<Workflow>> {
        self.shared.workflow(ns, name, version)
    }
}

/// `LINE:COL: ...` for every literal `service://NAME` of `text` whose NAME is not a service of
/// `services` (URLs built by expressions are checked when called).
fn unknown_services(text: &str, services: &kflow_tasks::services::Registry) -> Vec<String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let mut from = 0;
        while let Some(at) = line[from..].find("service://") {
            let start = from + at;
            let rest = &line[start + "service://".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                .collect();
            if !name.is_empty() && !services.contains(&name) {
                let col = line[..start].chars().count() + 1;
                let known = services.names();
                out.push(format!(
                    "{}:{col}: service://{name} is not a service of this server's config{}",
                    i + 1,
                    if known.is_empty() {
                        " (it has no services:)".to_string()
                    } else {
                        format!(" (services: {})", known.join(", "))
                    }
                ));
            }
            from = start + "service://".len();
        }
    }
    out
}
