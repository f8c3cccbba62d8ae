//! `kflow token create|ls|revoke`, `kflow login`, `kflow whoami`, `kflow audit ls|verify`.

use std::process::ExitCode;

use clap::Subcommand;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use kflow_api::security::{
    AuditList, AuditVerdict, CreatedToken, Rotated, SecretList, TokenList, TokenView, Whoami,
};

use super::http::{Api, Failure, typed};
use super::{Format, OutputArgs, ServerArgs, profile, render};

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a token and print it (once: the server keeps only its hash).
    Create {
        #[arg(long)]
        name: String,
        /// viewer, operator, editor, admin or worker.
        #[arg(long)]
        role: String,
        /// A namespace the token may act in (repeatable; `*` for all).
        #[arg(long = "namespace", value_name = "NS", required = true)]
        namespaces: Vec<String>,
        /// Lifetime: 30d, 12h, 45m or seconds (default: until revoked).
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
        #[command(flatten)]
        out: OutputArgs,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List tokens (never their secrets).
    Ls {
        #[command(flatten)]
        out: OutputArgs,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Revoke a token by id or name: it stops working at once.
    Revoke {
        #[arg(value_name = "ID|NAME")]
        target: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum SecretCommand {
    /// Set a secret of a namespace; the value is read from stdin (one trailing newline
    /// dropped), sealed by the server and never shown again.
    Set {
        namespace: String,
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List secrets: names only.
    Ls {
        #[command(flatten)]
        out: OutputArgs,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Remove a secret.
    Rm {
        namespace: String,
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Seal every secret under a new master key (the old key file is kept beside it).
    RotateKey {
        #[command(flatten)]
        server: ServerArgs,
    },
}

pub async fn secret(cmd: SecretCommand) -> Result<ExitCode, Failure> {
    match cmd {
        SecretCommand::Set {
            namespace,
            name,
            server,
        } => {
            let mut value = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut value)
                .map_err(|e| Failure::Usage(format!("cannot read the value from stdin: {e}")))?;
            let value = value
                .strip_suffix('\n')
                .map(|v| v.strip_suffix('\r').unwrap_or(v))
                .unwrap_or(&value)
                .to_string();
            if value.is_empty() {
                return Err(Failure::Usage(
                    "give the value on stdin: printf %s \"$VALUE\" | kflow secret set NS NAME"
                        .into(),
                ));
            }
            Api::new(&server)?
                .put_json(&["secrets", &namespace, &name], &json!({ "value": value }))
                .await?;
            println!("set secret {namespace}/{name}");
            Ok(ExitCode::SUCCESS)
        }
        SecretCommand::Ls { out, server } => {
            let v = Api::new(&server)?.get(&["secrets"], &[]).await?;
            print(out, &v, "secrets", |list: SecretList| {
                let rows: Vec<Vec<String>> = list
                    .items
                    .into_iter()
                    .map(|e| vec![e.namespace, e.name, when(Some(e.updated_ms))])
                    .collect();
                render::table(&["NAMESPACE", "NAME", "UPDATED"], &rows)
            })
        }
        SecretCommand::Rm {
            namespace,
            name,
            server,
        } => {
            Api::new(&server)?
                .delete(&["secrets", &namespace, &name])
                .await?;
            println!("removed secret {namespace}/{name}");
            Ok(ExitCode::SUCCESS)
        }
        SecretCommand::RotateKey { server } => {
            let v = Api::new(&server)?
                .post_json(&["secrets", "rotate-key"], &json!({}))
                .await?;
            let r: Rotated = typed(&v, "the rotation")?;
            println!("every secret is now sealed under key {}", r.key_id);
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// List audit entries, oldest first.
    Ls {
        #[arg(long)]
        actor: Option<String>,
        /// Entries whose action starts with this (e.g. `instances.`, `auth.`).
        #[arg(long)]
        action: Option<String>,
        #[arg(long)]
        namespace: Option<String>,
        /// Entries after this seq.
        #[arg(long, value_name = "SEQ")]
        after: Option<i64>,
        #[arg(long, value_name = "N", default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        out: OutputArgs,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Recompute the hash chain and name the first entry altered, removed or reordered; with
    /// `--head SEQ:HASH` (printed by an earlier verify), a truncated tail too.
    Verify {
        #[arg(long, value_name = "SEQ:HASH")]
        head: Option<String>,
        #[command(flatten)]
        out: OutputArgs,
        #[command(flatten)]
        server: ServerArgs,
    },
}

/// `30d`, `12h`, `45m`, `90s` or plain seconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (30d, 12h, 45m, 90s)"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: the unit must be d, h, m or s")),
    };
    match n.checked_mul(mult) {
        Some(0) => Err("a token's lifetime must be positive".into()),
        Some(v) => Ok(v),
        None => Err(format!("{s:?} is too long")),
    }
}

fn when(ms: Option<i64>) -> String {
    match ms {
        Some(ms) => render::fmt_datetime(&Value::from(ms)),
        None => "-".into(),
    }
}

/// Prints an answer: as the server sent it with `-o json`, else as text from its wire type.
fn print<T: DeserializeOwned>(
    out: OutputArgs,
    v: &Value,
    what: &str,
    text: impl FnOnce(T) -> String,
) -> Result<ExitCode, Failure> {
    match out.output {
        Format::Json | Format::Yaml => super::print_data(out.output, v),
        Format::Text => println!("{}", text(typed(v, what)?)),
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn token(cmd: TokenCommand) -> Result<ExitCode, Failure> {
    match cmd {
        TokenCommand::Create {
            name,
            role,
            namespaces,
            expires,
            out,
            server,
        } => {
            let expires = expires
                .map(|e| parse_duration(&e))
                .transpose()
                .map_err(|e| Failure::Usage(format!("--expires: {e}")))?;
            let api = Api::new(&server)?;
            let v = api
                .post_json(
                    &["tokens"],
                    &json!({"name": name, "role": role, "namespaces": namespaces,
                            "expires_in_seconds": expires}),
                )
                .await?;
            print(out, &v, "the token", |t: CreatedToken| {
                format!(
                    "{}\n(token {:?}, id {}, role {}, namespaces {}: shown once, keep it safe)",
                    t.token,
                    t.info.name,
                    t.info.id,
                    t.info.role,
                    t.info.namespaces.join(",")
                )
            })
        }
        TokenCommand::Ls { out, server } => {
            let v = Api::new(&server)?.get(&["tokens"], &[]).await?;
            print(out, &v, "tokens", |list: TokenList| {
                let rows: Vec<Vec<String>> = list
                    .items
                    .into_iter()
                    .map(|t| {
                        let state = if t.revoked_ms.is_some() {
                            "revoked"
                        } else {
                            "live"
                        };
                        vec![
                            t.id,
                            t.name,
                            t.role,
                            t.namespaces.join(","),
                            when(Some(t.created_ms)),
                            when(t.expires_ms),
                            state.to_string(),
                        ]
                    })
                    .collect();
                render::table(
                    &[
                        "ID",
                        "NAME",
                        "ROLE",
                        "NAMESPACES",
                        "CREATED",
                        "EXPIRES",
                        "STATE",
                    ],
                    &rows,
                )
            })
        }
        TokenCommand::Revoke { target, server } => {
            let v = Api::new(&server)?
                .post_json(&["tokens", &target, "revoke"], &json!({}))
                .await?;
            let t: TokenView = typed(&v, "the token")?;
            println!("revoked token {:?} ({})", t.name, t.id);
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub async fn whoami(api: &Api) -> Result<ExitCode, Failure> {
    let me: Whoami = typed(&api.get(&["whoami"], &[]).await?, "the caller")?;
    println!(
        "{} (role {}, namespaces {}){}",
        me.name,
        me.role,
        me.namespaces.join(","),
        if me.authenticated {
            ""
        } else {
            " — the server runs without authentication"
        }
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn login(server: &ServerArgs) -> Result<ExitCode, Failure> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| Failure::Usage(format!("cannot read the token from stdin: {e}")))?;
    let token = line.trim().to_string();
    if token.is_empty() {
        return Err(Failure::Usage(
            "give the token on stdin: echo \"$TOKEN\" | kflow login".into(),
        ));
    }
    let args = ServerArgs {
        server: server.server.clone(),
        token: Some(token.clone()),
        ca_file: server.ca_file.clone(),
    };
    let api = Api::new(&args)?;
    let me: Whoami = typed(&api.get(&["whoami"], &[]).await?, "the caller")?;
    let path = profile::write(&token)?;
    println!(
        "logged in to {} as {} (role {}); token saved in {}",
        api.base(),
        me.name,
        me.role,
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn audit(cmd: AuditCommand) -> Result<ExitCode, Failure> {
    match cmd {
        AuditCommand::Ls {
            actor,
            action,
            namespace,
            after,
            limit,
            out,
            server,
        } => {
            let mut q: Vec<(&str, String)> = vec![("limit", limit.to_string())];
            for (k, v) in [
                ("actor", actor),
                ("action", action),
                ("namespace", namespace),
            ] {
                if let Some(v) = v {
                    q.push((k, v));
                }
            }
            if let Some(a) = after {
                q.push(("after", a.to_string()));
            }
            let v = Api::new(&server)?.get(&["audit"], &q).await?;
            print(out, &v, "the audit trail", |list: AuditList| {
                let rows: Vec<Vec<String>> = list
                    .items
                    .into_iter()
                    .map(|e| {
                        vec![
                            e.seq.to_string(),
                            when(Some(e.at_ms)),
                            e.actor,
                            e.action,
                            render::clip(&e.resource, 60),
                            e.source,
                            render::clip(&e.result, 60),
                        ]
                    })
                    .collect();
                render::table(
                    &["SEQ", "AT", "ACTOR", "ACTION", "RESOURCE", "FROM", "RESULT"],
                    &rows,
                )
            })
        }
        AuditCommand::Verify { head, out, server } => {
            let mut q: Vec<(&str, String)> = Vec::new();
            if let Some(h) = head {
                let (seq, hash) = h
                    .split_once(':')
                    .filter(|(s, h)| s.parse::<i64>().is_ok() && !h.is_empty())
                    .ok_or_else(|| Failure::Usage(format!("--head {h:?}: expected SEQ:HASH")))?;
                q.push(("head_seq", seq.to_string()));
                q.push(("head_hash", hash.to_string()));
            }
            let v = Api::new(&server)?.get(&["audit", "verify"], &q).await?;
            let verdict: AuditVerdict = typed(&v, "the audit chain")?;
            let ok = verdict.ok;
            print(out, &v, "the audit chain", |v: AuditVerdict| {
                if v.ok {
                    format!(
                        "audit chain intact: {} entries; head {}:{}",
                        v.checked, v.head_seq, v.head_hash
                    )
                } else {
                    format!(
                        "audit chain BROKEN at entry {}: {}",
                        v.broken_at
                            .map(|s| s.to_string())
                            .unwrap_or_else(|| "?".into()),
                        v.reason.unwrap_or_default()
                    )
                }
            })?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations() {
        assert_eq!(super::parse_duration("30d"), Ok(30 * 86_400));
        assert_eq!(super::parse_duration("90"), Ok(90));
        assert_eq!(super::parse_duration("45m"), Ok(2700));
        assert!(super::parse_duration("0h").is_err());
        assert!(super::parse_duration("3w").is_err());
        assert!(super::parse_duration("h").is_err());
        assert!(super::parse_duration("99999999999999999999d").is_err());
    }
}
