//! `proteus experiment`: define, start, stop, decide and read experiments on feature flags.

use clap::{Args, Subcommand};
use proteus_client::{Client, ClientError};
use serde_json::Value;

use crate::cli::{ClientArgs, Output, client, json_arg, print_table};

#[derive(Args, Debug)]
pub struct Target {
    /// API key, when the server requires one (it must be for the experiment's flag set).
    #[arg(long, env = "PROTEUS_API_KEY", hide_env_values = true, global = true)]
    api_key: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Subcommand, Debug)]
pub enum ExperimentCommand {
    /// Create a draft experiment from a definition (see docs/experiments.md).
    Create {
        /// The definition as JSON, or @FILE.
        #[arg(long)]
        definition: String,
        #[command(flatten)]
        target: Target,
    },
    /// Replace the definition of a draft (same id).
    Redefine {
        id: String,
        /// The definition as JSON, or @FILE.
        #[arg(long)]
        definition: String,
        #[command(flatten)]
        target: Target,
    },
    /// List experiments with their state.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Show one experiment: definition and status.
    Get {
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Start a draft: exposures and metric events count from now.
    Start {
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Stop a running experiment: exposures no longer count.
    Stop {
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Delete a draft or a decided experiment (its aggregated state goes too).
    Delete {
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Decide a stopped experiment; --rollout makes the flag serve the variant to everyone.
    Decide {
        id: String,
        /// The chosen variant (one of the arms).
        #[arg(long)]
        variant: String,
        /// Change the flag: serve the variant to everyone (an audited flag-set revision).
        #[arg(long)]
        rollout: bool,
        /// Why, for the record.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// The results now: sample-ratio check, per arm and metric statistics, decision hint.
    Results {
        id: String,
        /// Also write an SVG chart of the primary metric's lift with its interval over time.
        #[arg(long, value_name = "FILE")]
        chart: Option<std::path::PathBuf>,
        #[command(flatten)]
        target: Target,
    },
}

fn connect(target: &Target) -> Result<Client, String> {
    Ok(client(&target.client)?.with_api_key(target.api_key.clone()))
}

/// A client error, with each definition error on its own line.
fn say(error: ClientError) -> String {
    match &error {
        ClientError::Problem { body, .. } if body["errors"].is_array() => {
            let lines: Vec<String> = body["errors"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| {
                    let path = e["path"].as_str().filter(|p| !p.is_empty()).unwrap_or("/");
                    format!("  {path}: {}", e["message"].as_str().unwrap_or(""))
                })
                .collect();
            format!(
                "the experiment definition is invalid:\n{}\nfix these fields and run the command again",
                lines.join("\n")
            )
        }
        _ => error.to_string(),
    }
}

fn print_experiment(output: Output, answer: &Value) {
    if output == Output::Json {
        println!("{answer}");
        return;
    }
    let allowed: Vec<&str> = answer["allowed_actions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    println!(
        "experiment {} is {}{}",
        answer["id"].as_str().unwrap_or(""),
        answer["state"].as_str().unwrap_or(""),
        if allowed.is_empty() {
            String::new()
        } else {
            format!(" (next: {})", allowed.join(", "))
        }
    );
}

pub async fn experiment(command: ExperimentCommand) -> Result<(), String> {
    match command {
        ExperimentCommand::Create { definition, target } => {
            let definition = json_arg("--definition", &definition)?;
            let answer = connect(&target)?
                .create_experiment(&definition)
                .await
                .map_err(say)?;
            print_experiment(target.client.output, &answer);
            Ok(())
        }
        ExperimentCommand::Redefine {
            id,
            definition,
            target,
        } => {
            let definition = json_arg("--definition", &definition)?;
            let answer = connect(&target)?
                .redefine_experiment(&id, &definition)
                .await
                .map_err(say)?;
            print_experiment(target.client.output, &answer);
            Ok(())
        }
        ExperimentCommand::List { target } => {
            let answer = connect(&target)?.list_experiments().await.map_err(say)?;
            if target.client.output == Output::Json {
                println!("{answer}");
                return Ok(());
            }
            let rows = answer["experiments"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| {
                    let d = &e["definition"];
                    vec![
                        text(&e["id"]),
                        text(&e["state"]),
                        format!("{}/{}", text(&d["flag_set"]), text(&d["flag"])),
                        d["arms"].as_array().map_or(0, Vec::len).to_string(),
                        text(&d["primary_metric"]),
                        text(&d["name"]),
                    ]
                })
                .collect();
            print_table(&["ID", "STATE", "FLAG", "ARMS", "PRIMARY", "NAME"], rows);
            Ok(())
        }
        ExperimentCommand::Get { id, target } => {
            let answer = connect(&target)?.get_experiment(&id).await.map_err(say)?;
            if target.client.output == Output::Json {
                println!("{answer}");
            } else {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&answer).unwrap_or_default()
                );
            }
            Ok(())
        }
        ExperimentCommand::Start { id, target } => {
            let answer = connect(&target)?.start_experiment(&id).await.map_err(say)?;
            print_experiment(target.client.output, &answer);
            Ok(())
        }
        ExperimentCommand::Delete { id, target } => {
            connect(&target)?
                .delete_experiment(&id)
                .await
                .map_err(say)?;
            if target.client.output == Output::Json {
                println!("{}", serde_json::json!({"deleted": id}));
            } else {
                println!("experiment {id} deleted");
            }
            Ok(())
        }
        ExperimentCommand::Stop { id, target } => {
            let answer = connect(&target)?.stop_experiment(&id).await.map_err(say)?;
            print_experiment(target.client.output, &answer);
            Ok(())
        }
        ExperimentCommand::Decide {
            id,
            variant,
            rollout,
            reason,
            target,
        } => {
            let answer = connect(&target)?
                .decide_experiment(&id, &variant, rollout, reason.as_deref())
                .await
                .map_err(say)?;
            if target.client.output == Output::Json {
                println!("{answer}");
            } else {
                print_experiment(Output::Table, &answer["experiment"]);
                match answer["flag_set_version"].as_u64() {
                    Some(version) => println!(
                        "the flag now serves '{variant}' to everyone (flag set version {version})"
                    ),
                    None if rollout => println!("the flag already served '{variant}'"),
                    None => {}
                }
            }
            Ok(())
        }
        ExperimentCommand::Results { id, chart, target } => {
            let client = connect(&target)?;
            let results = client.experiment_results(&id).await.map_err(say)?;
            if target.client.output == Output::Json {
                println!("{results}");
            } else {
                print_results(&results);
            }
            if let Some(path) = chart {
                let history = client.experiment_history(&id).await.map_err(say)?;
                let primary = results["metrics"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|m| {
                        m["roles"]
                            .as_array()
                            .is_some_and(|r| r.contains(&"primary".into()))
                    })
                    .map_or_else(String::new, |m| text(&m["metric"]));
                let title = format!("{id}: lift of {primary} against control");
                let svg = crate::chart::lift_chart(&title, &history["points"]);
                std::fs::write(&path, svg).map_err(|e| {
                    format!(
                        "cannot write the chart to {}: {e}; choose a writable path with --chart",
                        path.display()
                    )
                })?;
                eprintln!("chart written to {}", path.display());
            }
            Ok(())
        }
    }
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or("").to_owned()
}

fn number(value: &Value, digits: usize) -> String {
    value
        .as_f64()
        .map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
}

fn percent(value: &Value) -> String {
    value
        .as_f64()
        .map_or_else(|| "-".to_owned(), |v| format!("{:+.1}%", v * 100.0))
}

/// `lift [lower, upper]`, relative when the control mean allows it.
fn lift(comparison: &Value) -> String {
    let relative = &comparison["lift_relative"];
    if relative.is_object() {
        format!(
            "{} [{}, {}]",
            percent(&relative["estimate"]),
            percent(&relative["interval"]["lower"]),
            percent(&relative["interval"]["upper"])
        )
    } else {
        let absolute = &comparison["lift_absolute"];
        format!(
            "{} [{}, {}]",
            number(&absolute["estimate"], 4),
            number(&absolute["interval"]["lower"], 4),
            number(&absolute["interval"]["upper"], 4)
        )
    }
}

fn print_results(results: &Value) {
    let srm = &results["srm"];
    println!(
        "SRM: {} (p = {}): {}",
        text(&srm["status"]),
        number(&srm["p_value"], 4),
        text(&srm["message"])
    );
    let mut rows = Vec::new();
    for metric in results["metrics"].as_array().into_iter().flatten() {
        for arm in metric["arms"].as_array().into_iter().flatten() {
            let comparison = &arm["comparison"];
            let (lift, p_value, chance) = match comparison["status"].as_str() {
                Some("ready") => (
                    lift(comparison),
                    number(&comparison["p_value"], 4),
                    comparison["chance_to_beat_control"]
                        .as_f64()
                        .map_or_else(|| "-".to_owned(), |c| format!("{:.1}%", c * 100.0)),
                ),
                Some(_) => (
                    text(&comparison["status"]).replace('_', " "),
                    "-".into(),
                    "-".into(),
                ),
                None => ("(control)".into(), "-".into(), "-".into()),
            };
            rows.push(vec![
                text(&arm["variant"]),
                text(&metric["metric"]),
                arm["n"].to_string(),
                number(&arm["mean"], 4),
                lift,
                p_value,
                chance,
            ]);
        }
    }
    print_table(
        &[
            "ARM",
            "METRIC",
            "N",
            "MEAN",
            "LIFT [INTERVAL]",
            "P-VALUE",
            "CHANCE TO BEAT CONTROL",
        ],
        rows,
    );
    let decision = &results["decision"];
    println!(
        "decision: {}{}: {}",
        text(&decision["action"]).replace('_', " "),
        decision["variant"]
            .as_str()
            .map_or_else(String::new, |v| format!(" ({v})")),
        text(&decision["message"])
    );
    for breach in results["guardrail_breaches"]
        .as_array()
        .into_iter()
        .flatten()
    {
        println!("guardrail breached: {}", text(&breach["message"]));
    }
}
