//! `kflow schedules`: the workflows' schedules with their next fire times, and
//! `kflow schedules pause|resume NS/NAME`.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::json;

use kflow_api::schedules::{ScheduleList, ScheduleView};

use super::http::{Api, Failure, typed};
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
pub fn schedule_table(items: &[ScheduleView]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|s| {
            let workflow = format!("{}/{}@{}", s.namespace, s.name, s.version);
            let mut expr = s.expression.clone();
            if s.kind == "cron" && !s.timezone.is_empty() {
                expr = format!("{expr} ({})", s.timezone);
            }
            let next = if s.error.is_some() {
                "error (see -o json)".to_string()
            } else {
                match &s.next_fire {
                    Some(t) => t.clone(),
                    None if s.kind == "on" => "on event".to_string(),
                    None if s.kind == "after" => "after the running one".to_string(),
                    None => "-".to_string(),
                }
            };
            vec![
                workflow,
                if s.kind.is_empty() {
                    "-".into()
                } else {
                    s.kind.clone()
                },
                render::clip(&expr, 48),
                next,
                if s.paused { "yes" } else { "no" }.into(),
            ]
        })
        .collect();
    render::table(&["WORKFLOW", "KIND", "EXPR", "NEXT FIRE", "PAUSED"], &rows)
}

pub async fn list(api: &Api, format: Format) -> Result<ExitCode, Failure> {
    let v = api.get(&["schedules"], &[]).await?;
    if format.is_data() {
        super::print_data(format, &v);
        return Ok(ExitCode::SUCCESS);
    }
    let ScheduleList { items } = typed(&v, "the schedules")?;
    if items.is_empty() {
        eprintln!("no schedules (no registered workflow has a 'schedule')");
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", schedule_table(&items));
    for s in &items {
        if let Some(e) = &s.error {
            eprintln!("{}/{}: {e}", s.namespace, s.name);
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
        Format::Json | Format::Yaml => super::print_data(out.output, &v),
        Format::Text => print!(
            "{}",
            schedule_table(&[typed::<ScheduleView>(&v, "the schedule")?])
        ),
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
        let view = |v: serde_json::Value| -> ScheduleView {
            let mut full = json!({"timezone": "", "next_fire": null, "next_fire_ms": null,
                "last_fire": null, "last_fire_ms": null, "overlap": "allow", "missed": "skip",
                "catchup_max": 0, "error": null, "last_error": null, "running": [], "queued": 0,
                "fired": 0, "skipped": 0});
            for (k, x) in v.as_object().unwrap() {
                full[k] = x.clone();
            }
            serde_json::from_value(full).unwrap()
        };
        let items = vec![
            view(
                json!({"namespace": "ops", "name": "backup", "version": "1.2.0", "kind": "cron", "expression": "0 3 * * *",
                   "timezone": "Europe/Paris", "next_fire": "2026-03-29T03:00:00+02:00", "paused": false, "error": null}),
            ),
            view(
                json!({"namespace": "ops", "name": "orders", "version": "2.0.0", "kind": "on", "expression": "one [{\"type\":\"order\"}]",
                   "timezone": "UTC", "next_fire": null, "paused": true, "error": null}),
            ),
            view(
                json!({"namespace": "ops", "name": "broken", "version": "1.0.0", "kind": "", "expression": "",
                   "next_fire": null, "paused": false, "error": "cron never fires"}),
            ),
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
