//! `proteus flags`: validate flagd files locally, and manage flag sets on a server.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand, ValueEnum};
use proteus_client::{ChangeOptions, Client};
use proteus_flagsets::ValidationMode;
use serde_json::{Value, json};

use crate::cli::{ClientArgs, Output, client, json_arg, print_table, rfc3339_ms, say, truncate};

/// One line of output.
fn out(line: &str) {
    println!("{line}");
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ValidationArg {
    /// Refuse every definition problem (what people author).
    Strict,
    /// Load what flagd loads; report the rest as warnings.
    Flagd,
}

impl ValidationArg {
    fn mode(self) -> ValidationMode {
        match self {
            ValidationArg::Strict => ValidationMode::Strict,
            ValidationArg::Flagd => ValidationMode::Flagd,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            ValidationArg::Strict => "strict",
            ValidationArg::Flagd => "flagd",
        }
    }
}

/// Where a flag command acts.
#[derive(Args, Debug)]
pub struct SetArgs {
    /// The flag set (environment).
    #[arg(long = "set", default_value = "default", value_name = "FLAG_SET")]
    set: String,
    /// API key, when the server requires one.
    #[arg(long, env = "PROTEUS_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

/// Why a change is made, and what it was based on.
#[derive(Args, Debug)]
pub struct ChangeArgs {
    /// Recorded in the audit history.
    #[arg(long)]
    comment: Option<String>,
    /// Refuse the change unless the set is at this version.
    #[arg(long, value_name = "VERSION")]
    expected_version: Option<u64>,
}

#[derive(Subcommand, Debug)]
pub enum FlagsCommand {
    /// Check flagd files without a server: every error with its JSON path.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// How strictly to check the files: strict refuses every problem, flagd loads what
        /// flagd loads and warns about the rest.
        #[arg(long, value_enum, default_value = "strict")]
        validation: ValidationArg,
    },
    /// Replace a flag set with a flagd file (creating the set).
    Push {
        file: PathBuf,
        /// How strictly to check the files: strict refuses every problem, flagd loads what
        /// flagd loads and warns about the rest.
        #[arg(long, value_enum, default_value = "strict")]
        validation: ValidationArg,
        #[command(flatten)]
        change: ChangeArgs,
        #[command(flatten)]
        target: SetArgs,
    },
    /// Show a flag set's flags, or one flag's definition.
    Get {
        key: Option<String>,
        #[command(flatten)]
        target: SetArgs,
    },
    /// Create or replace one flag from a JSON definition (or turn it on or off).
    Set {
        key: String,
        /// The flag's definition as JSON (`{"state": …, "variants": …}`), or @FILE.
        #[arg(long, conflicts_with = "state")]
        definition: Option<String>,
        /// `disabled` is the kill switch: the flag is off everywhere at once.
        #[arg(long, value_enum)]
        state: Option<StateArg>,
        #[command(flatten)]
        change: ChangeArgs,
        #[command(flatten)]
        target: SetArgs,
    },
    /// Who changed what, when and why, newest first.
    History {
        /// Only the changes to this flag.
        key: Option<String>,
        /// Most changes to show.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        target: SetArgs,
    },
    /// Restore the set (or one flag, given its key) to an earlier version, as a new version.
    Rollback {
        key: Option<String>,
        /// The version to restore (see `proteus flags history`).
        #[arg(long, value_name = "VERSION")]
        to_version: u64,
        /// Why, recorded in the audit history.
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        target: SetArgs,
    },
    /// Schedule a change to one flag: its state (`--state disabled` at a time is a planned
    /// switch-off) or its definition.
    Schedule {
        key: String,
        /// When: RFC 3339 (2026-12-01T09:00:00Z) or milliseconds since the epoch.
        #[arg(long)]
        at: String,
        /// The state to switch the flag to at that time.
        #[arg(long, conflicts_with = "definition")]
        state: Option<StateArg>,
        /// The flag's new definition as JSON, or @FILE.
        #[arg(long)]
        definition: Option<String>,
        /// Why, recorded in the audit history.
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        target: SetArgs,
    },
    /// List pending scheduled changes, or cancel one.
    Schedules {
        /// Cancel the pending change with this id (from the list) instead of listing.
        #[arg(long, value_name = "ID")]
        cancel: Option<String>,
        #[command(flatten)]
        target: SetArgs,
    },
    /// Roll a variant out progressively (e.g. --steps 1,5,25,100 --every 1d), or pause a
    /// rollout (--pause): the steps not yet applied are cancelled.
    Rollout {
        key: String,
        /// The variant rolled out; the flag's defaultVariant serves everyone else.
        #[arg(long, required_unless_present = "pause")]
        variant: Option<String>,
        /// Percentages, in order: the first applies now, each next one --every later.
        #[arg(long, value_delimiter = ',', required_unless_present = "pause")]
        steps: Vec<u8>,
        /// Time between steps, like 30m, 12h or 1d.
        #[arg(long, default_value = "1d")]
        every: String,
        /// Pause the flag's rollout: the current step stays, the later ones are cancelled.
        #[arg(long, conflicts_with_all = ["variant", "steps"])]
        pause: bool,
        /// Why, recorded in the audit history.
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        target: SetArgs,
    },
    /// Flags whose code can probably go: not evaluated for a while, or serving one outcome to
    /// everyone (disabled, static, rolled out to 100%) for a while.
    Stale {
        /// Not evaluated for this long (30d, 12h, …), or `off`.
        #[arg(long, default_value = "30d")]
        unused_for: String,
        /// Serving one outcome to everyone for this long, or `off`.
        #[arg(long, default_value = "30d")]
        uniform_for: String,
        /// Exit with status 1 when a flag is stale (for CI checks).
        #[arg(long)]
        fail: bool,
        #[command(flatten)]
        target: SetArgs,
    },
    /// Evaluate a flag over OFREP, as an OpenFeature provider would.
    Evaluate {
        key: String,
        /// The evaluation context as a JSON object (with `targetingKey`).
        #[arg(long, default_value = "{}")]
        context: String,
        #[command(flatten)]
        target: SetArgs,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StateArg {
    Enabled,
    Disabled,
}

pub async fn flags(command: FlagsCommand) -> Result<(), String> {
    match command {
        FlagsCommand::Validate { files, validation } => validate(&files, validation),
        FlagsCommand::Push {
            file,
            validation,
            change,
            target,
        } => {
            let document = read_json(&file)?;
            let options = ChangeOptions {
                comment: change.comment.as_deref(),
                expected_version: change.expected_version,
                validation: Some(validation.as_str()),
            };
            let summary = connect(&target)?
                .put_flag_set(&target.set, &document, &options)
                .await
                .map_err(say)?;
            print_change(&target, &summary, "pushed")
        }
        FlagsCommand::Get { key, target } => get(key, &target).await,
        FlagsCommand::Set {
            key,
            definition,
            state,
            change,
            target,
        } => {
            let options = ChangeOptions {
                comment: change.comment.as_deref(),
                expected_version: change.expected_version,
                validation: None,
            };
            let client = connect(&target)?;
            let summary = match (definition, state) {
                (Some(definition), _) => {
                    let definition = json_arg("--definition", &definition)?;
                    client
                        .put_flag(&target.set, &key, &definition, &options)
                        .await
                }
                (None, Some(state)) => {
                    client
                        .set_flag_enabled(&target.set, &key, state == StateArg::Enabled, &options)
                        .await
                }
                (None, None) => {
                    return Err(
                        "say what to set: --definition JSON (or @FILE), or --state enabled|disabled"
                            .into(),
                    );
                }
            }
            .map_err(say)?;
            print_change(&target, &summary, &format!("flag '{key}' set"))
        }
        FlagsCommand::History { key, limit, target } => history(key, limit, &target).await,
        FlagsCommand::Rollback {
            key,
            to_version,
            comment,
            target,
        } => {
            let summary = connect(&target)?
                .restore_flags(&target.set, key.as_deref(), to_version, comment.as_deref())
                .await
                .map_err(say)?;
            let what = match &key {
                Some(key) => format!("flag '{key}' restored to its version {to_version}"),
                None => format!("restored to version {to_version}"),
            };
            print_change(&target, &summary, &what)
        }
        FlagsCommand::Schedule {
            key,
            at,
            state,
            definition,
            comment,
            target,
        } => {
            let change = match (state, definition) {
                (Some(state), _) => json!({"kind": "set_state", "key": key,
                    "state": if state == StateArg::Enabled { "ENABLED" } else { "DISABLED" }}),
                (None, Some(definition)) => {
                    let flag = json_arg("--definition", &definition)?;
                    json!({"kind": "put_flag", "key": key, "flag": flag})
                }
                (None, None) => {
                    return Err("say what to schedule: --state enabled|disabled, or --definition JSON (or @FILE)".into());
                }
            };
            let at = match at.parse::<i64>() {
                Ok(ms) => json!(ms),
                Err(_) => json!(at),
            };
            let schedule = connect(&target)?
                .schedule_flag_change(&target.set, &at, &change, comment.as_deref())
                .await
                .map_err(say)?;
            if target.client.output == Output::Json {
                out(&schedule.to_string());
            } else {
                out(&format!(
                    "scheduled {} for {} (id {})",
                    key,
                    rfc3339_ms(schedule["at_ms"].as_i64().unwrap_or(0)),
                    schedule["id"].as_str().unwrap_or("?")
                ));
            }
            Ok(())
        }
        FlagsCommand::Schedules { cancel, target } => {
            let client = connect(&target)?;
            if let Some(id) = cancel {
                client
                    .cancel_flag_schedule(&target.set, &id)
                    .await
                    .map_err(say)?;
                out(&format!("cancelled schedule {id}"));
                return Ok(());
            }
            let answer = client.flag_schedules(&target.set).await.map_err(say)?;
            let pending = answer["schedules"].as_array().cloned().unwrap_or_default();
            if target.client.output == Output::Json {
                for schedule in &pending {
                    out(&schedule.to_string());
                }
                return Ok(());
            }
            let rows = pending
                .iter()
                .map(|s| {
                    vec![
                        s["id"].as_str().unwrap_or("").to_owned(),
                        rfc3339_ms(s["at_ms"].as_i64().unwrap_or(0)),
                        s["change"]["kind"].as_str().unwrap_or("").to_owned(),
                        s["change"]["key"].as_str().unwrap_or("").to_owned(),
                        s["actor"].as_str().unwrap_or("").to_owned(),
                        truncate(s["comment"].as_str().unwrap_or(""), 40),
                    ]
                })
                .collect();
            print_table(&["ID", "AT", "CHANGE", "FLAG", "WHO", "WHY"], rows);
            Ok(())
        }
        FlagsCommand::Rollout {
            key,
            variant,
            steps,
            every,
            pause,
            comment,
            target,
        } => {
            let client = connect(&target)?;
            if pause {
                let answer = client.pause_rollout(&target.set, &key).await.map_err(say)?;
                let cancelled = answer["cancelled"].as_array().map_or(0, Vec::len);
                out(&format!(
                    "rollout of '{key}' paused: {cancelled} pending steps cancelled"
                ));
                return Ok(());
            }
            let variant = variant.ok_or("say which variant to roll out: --variant NAME")?;
            let every = humantime::parse_duration(&every).map_err(|e| {
                format!("--every '{every}' is not a duration like 30m, 12h or 1d: {e}")
            })?;
            let every_ms = i64::try_from(every.as_millis()).unwrap_or(i64::MAX);
            let start_ms = crate::cli::now_ms();
            let plan: Vec<(u8, Option<Value>)> = steps
                .iter()
                .enumerate()
                .map(|(n, percent)| {
                    let at = (n > 0)
                        .then(|| json!(start_ms.saturating_add(every_ms.saturating_mul(n as i64))));
                    (*percent, at)
                })
                .collect();
            let answer = client
                .start_rollout(&target.set, &key, &variant, &plan, comment.as_deref())
                .await
                .map_err(say)?;
            if target.client.output == Output::Json {
                out(&answer.to_string());
                return Ok(());
            }
            let rows = answer["steps"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|step| {
                    vec![
                        step["id"].as_str().unwrap_or("").to_owned(),
                        rfc3339_ms(step["at_ms"].as_i64().unwrap_or(0)),
                        format!("{}%", step["change"]["percent"]),
                    ]
                })
                .collect();
            print_table(&["ID", "AT", "PERCENT"], rows);
            Ok(())
        }
        FlagsCommand::Stale {
            unused_for,
            uniform_for,
            fail,
            target,
        } => stale(&unused_for, &uniform_for, fail, &target).await,
        FlagsCommand::Evaluate {
            key,
            context,
            target,
        } => {
            let context: Value = serde_json::from_str(&context)
                .map_err(|e| format!("--context is not valid JSON: {e}"))?;
            let answer = connect(&target)?
                .evaluate_flag(&key, &context)
                .await
                .map_err(say)?;
            out(&answer.to_string());
            Ok(())
        }
    }
}

fn connect(target: &SetArgs) -> Result<Client, String> {
    Ok(client(&target.client)?.with_api_key(target.api_key.clone()))
}

fn read_json(file: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{} is not valid JSON: {e}", file.display()))
}

fn validate(files: &[PathBuf], validation: ValidationArg) -> Result<(), String> {
    let mut invalid = 0;
    for file in files {
        let document = match read_json(file) {
            Ok(document) => document,
            Err(error) => {
                eprintln!("{error}");
                invalid += 1;
                continue;
            }
        };
        match proteus_flagsets::compile(&document, validation.mode()) {
            Ok(compiled) => {
                out(&format!(
                    "{}: valid, {} flags",
                    file.display(),
                    compiled.flag_set.len()
                ));
                for warning in &compiled.warnings {
                    out(&format!("  warning {warning}"));
                }
            }
            Err(errors) => {
                invalid += 1;
                eprintln!("{}: invalid", file.display());
                for error in errors.errors() {
                    eprintln!("  {error}");
                }
            }
        }
    }
    if invalid > 0 {
        return Err(format!(
            "{invalid} of {} files are invalid; fix the definitions at the paths above",
            files.len()
        ));
    }
    Ok(())
}

fn print_change(target: &SetArgs, summary: &Value, what: &str) -> Result<(), String> {
    if target.client.output == Output::Json {
        out(&summary.to_string());
        return Ok(());
    }
    let version = &summary["version"];
    if summary["changed"] == json!(false) {
        out(&format!(
            "flag set '{}' unchanged (version {version}): it already was that way",
            target.set
        ));
    } else {
        out(&format!(
            "flag set '{}' {what}: now version {version}",
            target.set
        ));
    }
    for warning in summary["warnings"].as_array().into_iter().flatten() {
        out(&format!(
            "  warning {}",
            warning.as_str().unwrap_or_default()
        ));
    }
    Ok(())
}

async fn get(key: Option<String>, target: &SetArgs) -> Result<(), String> {
    let client = connect(target)?;
    let answer = match &key {
        Some(key) => client.get_flag(&target.set, key).await,
        None => client.get_flag_set(&target.set).await,
    }
    .map_err(say)?;
    if target.client.output == Output::Json || key.is_some() {
        let shown = if key.is_some() && target.client.output == Output::Table {
            serde_json::to_string_pretty(&answer["definition"]).unwrap_or_default()
        } else {
            answer.to_string()
        };
        out(&shown);
        return Ok(());
    }
    out(&format!(
        "flag set '{}' version {} ({} flags, updated {})",
        target.set,
        answer["version"],
        answer["flags"],
        rfc3339_ms(answer["updated_ms"].as_i64().unwrap_or(0))
    ));
    let flags = answer["document"]["flags"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let rows: Vec<Vec<String>> = flags
        .iter()
        .map(|(key, flag)| {
            let variants = flag["variants"]
                .as_object()
                .map(|v| v.keys().cloned().collect::<Vec<_>>().join(","))
                .unwrap_or_default();
            vec![
                key.clone(),
                flag["state"].as_str().unwrap_or("?").to_owned(),
                flag["defaultVariant"]
                    .as_str()
                    .unwrap_or("(code default)")
                    .to_owned(),
                truncate(&variants, 40),
                if flag.get("targeting").is_some_and(|t| t != &json!({})) {
                    "yes".into()
                } else {
                    "no".into()
                },
            ]
        })
        .collect();
    print_table(&["FLAG", "STATE", "DEFAULT", "VARIANTS", "TARGETING"], rows);
    Ok(())
}

async fn stale(
    unused_for: &str,
    uniform_for: &str,
    fail: bool,
    target: &SetArgs,
) -> Result<(), String> {
    let report = connect(target)?
        .stale_flags(&target.set, Some(unused_for), Some(uniform_for))
        .await
        .map_err(say)?;
    let flags = report["flags"].as_array().cloned().unwrap_or_default();
    if target.client.output == Output::Json {
        out(&report.to_string());
    } else {
        let never = format!(
            "never (tracked since {})",
            rfc3339_ms(report["tracked_since_ms"].as_i64().unwrap_or(0))
        );
        let rows = flags
            .iter()
            .map(|flag| {
                let reasons: Vec<&str> = flag["reasons"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                let serves = match (&flag["uniform"]["kind"], &flag["uniform"]["variant"]) {
                    (Value::String(kind), Value::String(variant)) => format!("{variant} ({kind})"),
                    (Value::String(kind), _) => format!("code default ({kind})"),
                    _ => "a split".to_owned(),
                };
                vec![
                    flag["key"].as_str().unwrap_or("").to_owned(),
                    reasons.join(", "),
                    flag["last_evaluated_ms"]
                        .as_i64()
                        .map_or_else(|| never.clone(), rfc3339_ms),
                    serves,
                    flag["uniform_since_ms"]
                        .as_i64()
                        .map_or_else(String::new, rfc3339_ms),
                ]
            })
            .collect();
        print_table(&["FLAG", "WHY", "LAST EVALUATED", "SERVES", "SINCE"], rows);
    }
    if fail && !flags.is_empty() {
        return Err(format!(
            "{} stale flag(s) in flag set '{}': remove them from the code and the set, or widen --unused-for/--uniform-for",
            flags.len(),
            target.set
        ));
    }
    Ok(())
}

async fn history(key: Option<String>, limit: usize, target: &SetArgs) -> Result<(), String> {
    let answer = connect(target)?
        .flag_history(&target.set, key.as_deref(), limit)
        .await
        .map_err(say)?;
    let revisions = answer["revisions"].as_array().cloned().unwrap_or_default();
    if target.client.output == Output::Json {
        for revision in &revisions {
            out(&revision.to_string());
        }
        return Ok(());
    }
    let rows: Vec<Vec<String>> = revisions
        .iter()
        .map(|r| {
            let what = match (&r["flag"], &r["restored_version"]) {
                (Value::String(flag), _) => format!("{} {flag}", r["kind"].as_str().unwrap_or("")),
                (_, Value::Number(version)) => format!("rollback to v{version}"),
                _ => r["kind"].as_str().unwrap_or("").to_owned(),
            };
            vec![
                r["version"].to_string(),
                rfc3339_ms(r["time_ms"].as_i64().unwrap_or(0)),
                r["actor"].as_str().unwrap_or("").to_owned(),
                what,
                format!("{} ops", r["patch"].as_array().map_or(0, Vec::len)),
                truncate(r["comment"].as_str().unwrap_or(""), 40),
            ]
        })
        .collect();
    print_table(&["VERSION", "TIME", "WHO", "WHAT", "DIFF", "WHY"], rows);
    Ok(())
}
