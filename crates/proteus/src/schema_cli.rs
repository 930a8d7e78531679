//! `proteus schema`: register, check and list event schemas.

use clap::Subcommand;
use serde_json::Value;

use crate::cli::{ClientArgs, Output, client, json_arg, print_table};

#[derive(Subcommand, Debug)]
pub enum SchemaCommand {
    /// Register the next version of an event type's JSON Schema (refused if it breaks the
    /// type's compatibility mode).
    Register {
        event_type: String,
        /// The JSON Schema, or @FILE.
        #[arg(long)]
        schema: String,
        /// How events of the previous version become this one: {"from_version", "to_version",
        /// "steps": [{"op": "rename"|"add"|"remove"|"move"|"convert", …}]}, or @FILE.
        #[arg(long)]
        upcaster: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Would this schema be accepted? Prints every incompatibility; exits 1 if it would not.
    Check {
        event_type: String,
        /// The JSON Schema that would be registered, or @FILE.
        #[arg(long)]
        schema: String,
        /// The upcaster that would come with it, or @FILE.
        #[arg(long)]
        upcaster: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List event types, or the versions of one.
    List {
        event_type: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Set an event type's compatibility mode: NONE, BACKWARD, BACKWARD_TRANSITIVE, FORWARD,
    /// FORWARD_TRANSITIVE, FULL, FULL_TRANSITIVE.
    Mode {
        event_type: String,
        mode: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// The incompatibilities of a problem or report, one per line.
fn incompatibilities(body: &Value) -> String {
    body["incompatibilities"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            format!(
                "  {} at {} (against version {}): {}",
                i["kind"].as_str().unwrap_or(""),
                i["path"].as_str().unwrap_or(""),
                i["version"],
                i["message"].as_str().unwrap_or("")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub async fn schema(command: SchemaCommand) -> Result<(), String> {
    match command {
        SchemaCommand::Register {
            event_type,
            schema,
            upcaster,
            client: args,
        } => {
            let schema = json_arg("--schema", &schema)?;
            let upcaster = upcaster.map(|u| json_arg("--upcaster", &u)).transpose()?;
            let answer = client(&args)?
                .register_schema(&event_type, &schema, upcaster.as_ref())
                .await
                .map_err(|e| match &e {
                    proteus_client::ClientError::Problem { body, .. }
                        if body["incompatibilities"].is_array() =>
                    {
                        format!("{e}\n{}", incompatibilities(body))
                    }
                    _ => e.to_string(),
                })?;
            if args.output == Output::Json {
                println!("{answer}");
            } else if answer["created"] == true {
                println!("registered {event_type} version {}", answer["version"]);
            } else {
                println!(
                    "{event_type} version {} already has this schema",
                    answer["version"]
                );
            }
            Ok(())
        }
        SchemaCommand::Check {
            event_type,
            schema,
            upcaster,
            client: args,
        } => {
            let schema = json_arg("--schema", &schema)?;
            let upcaster = upcaster.map(|u| json_arg("--upcaster", &u)).transpose()?;
            let report = client(&args)?
                .check_schema(&event_type, &schema, upcaster.as_ref())
                .await
                .map_err(|e| e.to_string())?;
            if args.output == Output::Json {
                println!("{report}");
            } else if report["compatible"] == true {
                println!(
                    "compatible with {} ({})",
                    event_type,
                    report["mode"].as_str().unwrap_or("")
                );
            } else {
                println!(
                    "incompatible with {} ({}):\n{}",
                    event_type,
                    report["mode"].as_str().unwrap_or(""),
                    incompatibilities(&report)
                );
            }
            if report["compatible"] != true || report["upcaster_required"] == true {
                return Err(if report["upcaster_required"] == true {
                    "registering it needs an upcaster from the latest version (--upcaster)".into()
                } else {
                    "the schema would be refused".into()
                });
            }
            Ok(())
        }
        SchemaCommand::List {
            event_type,
            client: args,
        } => {
            let client = client(&args)?;
            let answer = match &event_type {
                Some(event_type) => client.get_schemas(event_type).await,
                None => client.list_schemas().await,
            }
            .map_err(|e| e.to_string())?;
            if args.output == Output::Json {
                println!("{answer}");
                return Ok(());
            }
            if event_type.is_some() {
                let rows = answer["versions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|v| {
                        vec![
                            v["version"].to_string(),
                            v["upcaster"]["steps"]
                                .as_array()
                                .map_or("-".to_owned(), |s| format!("{} steps", s.len())),
                            v["schema"].to_string().chars().take(80).collect(),
                        ]
                    })
                    .collect();
                println!("mode {}", answer["mode"].as_str().unwrap_or(""));
                print_table(&["VERSION", "UPCASTER", "SCHEMA"], rows);
            } else {
                let rows = answer["event_types"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| {
                        vec![
                            t["event_type"].as_str().unwrap_or("").to_owned(),
                            t["latest_version"].to_string(),
                            t["mode"].as_str().unwrap_or("").to_owned(),
                        ]
                    })
                    .collect();
                print_table(&["EVENT TYPE", "LATEST", "MODE"], rows);
            }
            Ok(())
        }
        SchemaCommand::Mode {
            event_type,
            mode,
            client: args,
        } => {
            client(&args)?
                .set_schema_mode(&event_type, &mode)
                .await
                .map_err(|e| e.to_string())?;
            println!("{event_type} now uses {mode}");
            Ok(())
        }
    }
}
