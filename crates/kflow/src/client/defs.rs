//! `kflow defs ls|get|deprecate`: the registered workflow definitions and their versions.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{Value, json};

use kflow_api::definitions::{DefinitionDetail, DefinitionList};

use super::http::{Api, Failure, typed};
use super::verbs::{default_namespace, parse_workflow_ref};
use super::{OutputArgs, ServerArgs, print_data, render};

#[derive(Subcommand, Debug)]
pub enum DefsCommand {
    /// List every registered version (newest registrations last), deprecated ones marked.
    Ls {
        /// Only this namespace.
        #[arg(long)]
        namespace: Option<String>,
        #[command(flatten)]
        out: OutputArgs,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Print a definition's document as registered (the latest version without @VERSION).
    Get {
        /// [NS/]NAME[@VERSION]
        workflow: String,
        #[command(flatten)]
        out: OutputArgs,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Deprecate a version: it starts no new instances (running ones go on). `--undo` lifts it.
    Deprecate {
        /// [NS/]NAME@VERSION
        workflow: String,
        #[arg(long)]
        undo: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
}

pub async fn run(cmd: DefsCommand) -> Result<ExitCode, Failure> {
    match cmd {
        DefsCommand::Ls {
            namespace,
            out,
            server,
        } => {
            let q: Vec<(&str, String)> = namespace.map(|n| ("namespace", n)).into_iter().collect();
            let v = Api::new(&server)?.get(&["definitions"], &q).await?;
            if out.output.is_data() {
                print_data(out.output, &v);
                return Ok(ExitCode::SUCCESS);
            }
            let list: DefinitionList = typed(&v, "the definitions")?;
            let rows: Vec<Vec<String>> = list
                .items
                .into_iter()
                .map(|d| {
                    vec![
                        format!("{}/{}", d.namespace, d.name),
                        d.version,
                        if d.deprecated { "yes" } else { "no" }.into(),
                        render::fmt_datetime(&Value::from(d.created_ms)),
                        d.hash.chars().take(12).collect(),
                    ]
                })
                .collect();
            print!(
                "{}",
                render::table(
                    &["WORKFLOW", "VERSION", "DEPRECATED", "REGISTERED", "HASH"],
                    &rows
                )
            );
            Ok(ExitCode::SUCCESS)
        }
        DefsCommand::Get {
            workflow,
            out,
            server,
        } => {
            let wf = parse_workflow_ref(&workflow, &default_namespace()).map_err(Failure::Usage)?;
            let api = Api::new(&server)?;
            let v = match &wf.version {
                Some(version) => {
                    api.get(
                        &["definitions", &wf.namespace, &wf.name, "versions", version],
                        &[],
                    )
                    .await?
                }
                None => {
                    api.get(&["definitions", &wf.namespace, &wf.name], &[])
                        .await?
                }
            };
            if out.output.is_data() {
                print_data(out.output, &v);
            } else {
                let d: DefinitionDetail = typed(&v, "the definition")?;
                print!("{}", d.source);
                if !d.source.ends_with('\n') {
                    println!();
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DefsCommand::Deprecate {
            workflow,
            undo,
            server,
        } => {
            let wf = parse_workflow_ref(&workflow, &default_namespace()).map_err(Failure::Usage)?;
            let Some(version) = &wf.version else {
                return Err(Failure::Usage(format!(
                    "{workflow:?}: name the version to deprecate (NAME@VERSION)"
                )));
            };
            Api::new(&server)?
                .post_json(
                    &[
                        "definitions",
                        &wf.namespace,
                        &wf.name,
                        "versions",
                        version,
                        "deprecate",
                    ],
                    &json!({ "deprecated": !undo }),
                )
                .await?;
            println!(
                "{}/{}@{version} {}",
                wf.namespace,
                wf.name,
                if undo { "undeprecated" } else { "deprecated" }
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
