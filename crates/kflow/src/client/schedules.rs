//! `kflow schedules`: the workflows' schedules with their next fire times, and
//! `kflow schedules pause|resume NS/NAME`.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{Value, json};

use super::http::{Api, Failure};
use super::{Format, OutputArgs, ServerArgs, render};

#[derive(Subcommand, Debug)]
pub enum SchedulesCommand {
    /// Pause a workflow's schedule: no tick fires and no event starts it.
    Pause {
        #[arg(value_name = "NS/NAME")]
        workflow: String,
        #[command(flatten)]
        out: OutputArgs,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Resume a paused schedule (missed ticks follow its missed policy).
    Resume {
        #[arg(value_name = "NS/NAME")]
        workflow: String,
        #[command(flatten)]
        out: OutputArgs,
        #[command(flatten)]
        server: ServerArgs,
    },
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// `NS/NAME` (no version: a schedule follows the newest version).
pub fn parse_ns_name(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((ns, name))
            if !ns.is_empty() && !name.is_empty() && !name.contains('/') && !s.contains('@') =>
        {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(format!(
            "{s:?} is not NAMESPACE/NAME (a schedule has no version: it follows the newest one)"
        )),
    }
}

/// The table of `kflow schedules`.
pub fn schedule_table(items: &[Value]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|s| {
            let workflow = format!(
                "{}/{}@{}",
                text(s, "namespace"),
                text(s, "name"),
                text(s, "version")
            );
            let kind = text(s, "kind");
            let mut expr = text(s, "expression").to_string();
            if kind == "cron" && !text(s, "timezone").is_empty() {
                expr = format!("{expr} ({})", text(s, "timezone"));
            }
            let next = if s.get("error").is_some_and(|e| !e.is_null()) {
                "error (see -o json)".to_string()
            } else {
                match s.get("next_fire").and_then(Value::as_str) {
                    Some(t) => t.to_string(),
                    None if kind == "on" => "on event".to_string(),
                    None if kind == "after" => "after the running one".to_string(),
                    None => "-".to_string(),
                }
            };
            let paused = if s.get("paused") == Some(&json!(true)) {
                "yes"
            } else {
                "no"
            };
            vec![
                workflow,
                if kind.is_empty() {
                    "-".into()
                } else {
                    kind.into()
                },
                render::clip(&expr, 48),
                next,
                paused.into(),
            ]
        })
        .collect();
    render::table(&["WORKFLOW", "KIND", "EXPR", "NEXT FIRE", "PAUSED"], &rows)
}

pub async fn list(api: &Api, format: Format) -> Result<ExitCode, Failure> {
    let v = api.get(&["schedules"], &[]).await?;
    if format == Format::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string())
        );
        return Ok(ExitCode::SUCCESS);
    }
    let Some(items) = v.get("items").and_then(Value::as_array) else {
        return Err(Failure::Protocol(format!(
            "the schedule list has no items array: {}",
            render::clip(&v.to_string(), 200)
        )));
    };
    if items.is_empty() {
        eprintln!("no schedules (no registered workflow has a 'schedule')");
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", schedule_table(items));
    for s in items {
        if let Some(e) = s.get("error").and_then(Value::as_str) {
            eprintln!("{}/{}: {e}", text(s, "namespace"), text(s, "name"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn control(api: &Api, cmd: SchedulesCommand) -> Result<ExitCode, Failure> {
    let (workflow, out, verb) = match &cmd {
        SchedulesCommand::Pause { workflow, out, .. } => (workflow, out, "pause"),
        SchedulesCommand::Resume { workflow, out, .. } => (workflow, out, "resume"),
    };
    let (ns, name) = parse_ns_name(workflow).map_err(Failure::Usage)?;
    let v = api
        .post_json(&["schedules", &ns, &name, verb], &json!({}))
        .await?;
    match out.output {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string())
        ),
        Format::Text => print!("{}", schedule_table(std::slice::from_ref(&v))),
    }
    Ok(ExitCode::SUCCESS)
}

pub fn server_of(cmd: &SchedulesCommand) -> &ServerArgs {
    match cmd {
        SchedulesCommand::Pause { server, .. } | SchedulesCommand::Resume { server, .. } => server,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ns_name() {
        assert_eq!(
            parse_ns_name("a/b").unwrap(),
            ("a".to_string(), "b".to_string())
        );
        for bad in ["a", "/b", "a/", "a/b/c", "a/b@1.0.0"] {
            assert!(parse_ns_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn table_of_schedules() {
        let items = vec![
            json!({"namespace": "ops", "name": "backup", "version": "1.2.0", "kind": "cron", "expression": "0 3 * * *",
                   "timezone": "Europe/Paris", "next_fire": "2026-03-29T03:00:00+02:00", "paused": false, "error": null}),
            json!({"namespace": "ops", "name": "orders", "version": "2.0.0", "kind": "on", "expression": "one [{\"type\":\"order\"}]",
                   "timezone": "UTC", "next_fire": null, "paused": true, "error": null}),
            json!({"namespace": "ops", "name": "broken", "version": "1.0.0", "kind": "", "expression": "",
                   "next_fire": null, "paused": false, "error": "cron never fires"}),
        ];
        let t = schedule_table(&items);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["WORKFLOW", "KIND", "EXPR", "NEXT", "FIRE", "PAUSED"]
        );
        assert!(
            lines[1].starts_with("ops/backup@1.2.0")
                && lines[1].contains("0 3 * * * (Europe/Paris)"),
            "{t}"
        );
        assert!(
            lines[1].contains("2026-03-29T03:00:00+02:00") && lines[1].ends_with("no"),
            "{t}"
        );
        assert!(
            lines[2].contains("on event") && lines[2].ends_with("yes"),
            "{t}"
        );
        assert!(lines[3].contains("error (see -o json)"), "{t}");
    }
}
