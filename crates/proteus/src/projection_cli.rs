//! `proteus projection`: create projections, follow their status, query their read models.

use clap::Subcommand;
use serde_json::Value;

use crate::cli::{ClientArgs, Output, client, json_arg, print_table, say};

#[derive(Subcommand, Debug)]
pub enum ProjectionCommand {
    /// Create a projection from a JSON definition (inline or @FILE); it projects from the first
    /// event, then follows new ones.
    Create {
        name: String,
        /// The definition as JSON, or @FILE: a `source` (`{"category": "order"}` or
        /// `{"all": true}`) and one of `state` (a document per key, with handlers per event
        /// type), `aggregate` (counts and sums by group) or `list` (the last events per key),
        /// such as {"source": {"category": "order"}, "state": {"key": "stream", "handlers":
        /// {"OrderPlaced": {"set": {"total": {"path": "/data/total"}}}}}}. Reference:
        /// docs/event-sourcing.md, "Projections".
        #[arg(long, value_name = "JSON|@FILE")]
        definition: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Status of every projection, or of one: state, position, lag, error.
    Status {
        name: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Documents of a read model: one by --key, or a filtered, sorted page.
    Query {
        name: String,
        /// The one document with this key (a stream name, or the value the definition keys by).
        #[arg(long, conflicts_with_all = ["filter", "sort"])]
        key: Option<String>,
        /// PATH:OP:VALUE, such as status:eq:placed (repeatable; ops: eq ne lt lte gt gte in
        /// prefix exists).
        #[arg(long)]
        filter: Vec<String>,
        /// A field to sort by, `-` first for descending (--sort -total).
        #[arg(long, allow_hyphen_values = true)]
        sort: Option<String>,
        /// Most documents in the page.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Where the next page starts: the cursor printed after the previous page.
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Drop the read model and rebuild it from the first event.
    Rebuild {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop projecting at the current checkpoint until resumed (queries keep answering).
    Pause {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Resume a paused projection, or retry a failed one at its failing event.
    Resume {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a projection and its read model.
    Delete {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

fn status_row(status: &Value) -> Vec<String> {
    vec![
        status["name"].as_str().unwrap_or("").to_owned(),
        status["state"].as_str().unwrap_or("").to_owned(),
        status["checkpoint"]["position"].to_string(),
        status["head_position"].to_string(),
        status["lag"].to_string(),
        status["lag_ms"]
            .as_u64()
            .map_or_else(|| "-".to_owned(), |ms| format!("{:.1}", ms as f64 / 1000.0)),
        status["error"]["reason"]
            .as_str()
            .map(|reason| format!("at position {}: {reason}", status["error"]["position"]))
            .unwrap_or_default(),
    ]
}

fn print_status(statuses: &[Value], output: Output) {
    if output == Output::Json {
        for status in statuses {
            println!("{status}");
        }
        return;
    }
    let rows = statuses.iter().map(status_row).collect();
    // The checkpoint is the next position to project, so it passes the head by one once the
    // projection has caught up: named as such, it does not read as an error.
    print_table(
        &[
            "NAME",
            "STATE",
            "NEXT POSITION",
            "HEAD",
            "LAG",
            "LAG S",
            "ERROR",
        ],
        rows,
    );
}

pub async fn projection(command: ProjectionCommand) -> Result<(), String> {
    match command {
        ProjectionCommand::Create {
            name,
            definition,
            client: args,
        } => {
            let definition = json_arg("--definition", &definition)?;
            let status = client(&args)?
                .create_projection(&name, &definition)
                .await
                .map_err(|e| match &e {
                    proteus_client::ClientError::Problem { body, .. }
                        if body["errors"].is_array() =>
                    {
                        let lines: Vec<String> = body["errors"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|e| {
                                format!(
                                    "  {}: {}",
                                    e["path"].as_str().unwrap_or(""),
                                    e["message"].as_str().unwrap_or("")
                                )
                            })
                            .collect();
                        format!("{e}\n{}", lines.join("\n"))
                    }
                    _ => say(e),
                })?;
            print_status(&[status], args.output);
            Ok(())
        }
        ProjectionCommand::Status { name, client: args } => {
            let answer = client(&args)?
                .projection_status(name.as_deref())
                .await
                .map_err(say)?;
            let statuses = match name {
                Some(_) => vec![answer],
                None => answer["projections"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
            };
            print_status(&statuses, args.output);
            Ok(())
        }
        ProjectionCommand::Query {
            name,
            key,
            filter,
            sort,
            limit,
            cursor,
            client: args,
        } => {
            let client = client(&args)?;
            if let Some(key) = key {
                let doc = client
                    .projection_doc(&name, &key, None)
                    .await
                    .map_err(say)?
                    .ok_or_else(|| format!("projection '{name}' has no document '{key}'"))?;
                println!("{doc}");
                return Ok(());
            }
            let limit = limit.to_string();
            let mut params: Vec<(&str, &str)> =
                filter.iter().map(|f| ("filter", f.as_str())).collect();
            if let Some(sort) = &sort {
                params.push(("sort", sort));
            }
            params.push(("limit", &limit));
            if let Some(cursor) = &cursor {
                params.push(("cursor", cursor));
            }
            let page = client.query_projection(&name, &params).await.map_err(say)?;
            let items = page["items"].as_array().cloned().unwrap_or_default();
            if args.output == Output::Json {
                println!("{page}");
                return Ok(());
            }
            let rows = items
                .iter()
                .map(|item| {
                    vec![
                        item["key"].as_str().unwrap_or("").to_owned(),
                        item["doc"].to_string(),
                    ]
                })
                .collect();
            print_table(&["KEY", "DOCUMENT"], rows);
            if let Some(next) = page["next_cursor"].as_str() {
                println!("more: --cursor {next}");
            }
            Ok(())
        }
        ProjectionCommand::Rebuild { name, client: args } => {
            let status = client(&args)?
                .control_projection(&name, "reset")
                .await
                .map_err(say)?;
            print_status(&[status], args.output);
            Ok(())
        }
        ProjectionCommand::Pause { name, client: args } => {
            let status = client(&args)?
                .control_projection(&name, "pause")
                .await
                .map_err(say)?;
            print_status(&[status], args.output);
            Ok(())
        }
        ProjectionCommand::Resume { name, client: args } => {
            let status = client(&args)?
                .control_projection(&name, "resume")
                .await
                .map_err(say)?;
            print_status(&[status], args.output);
            Ok(())
        }
        ProjectionCommand::Delete { name, client: args } => {
            client(&args)?.delete_projection(&name).await.map_err(say)?;
            println!("deleted projection {name}");
            Ok(())
        }
    }
}
