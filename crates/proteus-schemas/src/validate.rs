//! Compiled schemas and validation of event data, with boon.

use std::error::Error;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Base URL of every schema: relative `$ref`s resolve under it, and the loader below refuses
/// them, so a schema never makes the registry read a file or the network.
const SCHEMA_URL: &str = "file:///proteus/schema.json";

/// One reason data does not match a schema.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// JSON pointer into the data, e.g. `/items/0/price` (empty: the whole event).
    pub instance_path: String,
    /// JSON pointer into the schema of the keyword that failed, e.g. `/properties/price/type`.
    pub schema_path: String,
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = if self.instance_path.is_empty() {
            "(root)"
        } else {
            &self.instance_path
        };
        write!(f, "at {at}: {}", self.message)
    }
}

/// A schema compiled once at registration, so validating an append costs no compilation.
pub struct CompiledSchema {
    schemas: boon::Schemas,
    index: boon::SchemaIndex,
}

impl std::fmt::Debug for CompiledSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CompiledSchema")
    }
}

struct NoLoader;

impl boon::UrlLoader for NoLoader {
    fn load(&self, url: &str) -> Result<Value, Box<dyn Error>> {
        Err(format!(
            "{url} is outside the schema: the registry follows only $refs inside the same document (\"#/$defs/...\"); inline the referenced schema under $defs"
        )
        .into())
    }
}

impl CompiledSchema {
    /// Compiles `schema` (draft 2020-12 unless it names another with `$schema`), checking it
    /// against its metaschema. `format` is asserted: `"format": "date-time"` means it.
    pub fn compile(schema: &Value) -> Result<CompiledSchema, String> {
        let mut compiler = boon::Compiler::new();
        compiler.use_loader(Box::new(NoLoader));
        compiler.set_default_draft(boon::Draft::V2020_12);
        compiler.enable_format_assertions();
        compiler
            .add_resource(SCHEMA_URL, schema.clone())
            .map_err(|e| describe_compile_error(&e))?;
        let mut schemas = boon::Schemas::new();
        let index = compiler
            .compile(SCHEMA_URL, &mut schemas)
            .map_err(|e| describe_compile_error(&e))?;
        Ok(CompiledSchema { schemas, index })
    }

    /// The violations of `data`, at most `max`; the flag says whether more were cut.
    pub fn violations(&self, data: &Value, max: usize) -> (Vec<Violation>, bool) {
        if !self.schemas.contains(self.index) {
            return (Vec::new(), false);
        }
        let Err(error) = self.schemas.validate(data, self.index) else {
            return (Vec::new(), false);
        };
        let mut out = Vec::new();
        let mut truncated = false;
        leaves(&error, max, &mut out, &mut truncated);
        if out.is_empty() {
            out.push(Violation {
                instance_path: error.instance_location.to_string(),
                schema_path: schema_path(&error),
                message: error.kind.to_string(),
            });
        }
        (out, truncated)
    }
}

/// The JSON pointer of the failing keyword: the schema location plus the keyword's name.
fn schema_path(error: &boon::ValidationError<'_, '_>) -> String {
    let mut path = error
        .schema_url
        .split_once('#')
        .map_or(String::new(), |(_, f)| f.to_owned());
    if let Some(keyword) = error.kind.keyword_path() {
        // boon names the keyword of an unexpected property in the singular.
        let name = match keyword.keyword {
            "additionalProperty" => "additionalProperties",
            other => other,
        };
        path.push('/');
        path.push_str(name);
        if let Some(boon::SchemaToken::Prop(prop)) = keyword.token {
            path.push('/');
            path.push_str(&crate::compat::escape_token(prop));
        }
    }
    path
}

fn leaves(
    error: &boon::ValidationError<'_, '_>,
    max: usize,
    out: &mut Vec<Violation>,
    truncated: &mut bool,
) {
    if error.causes.is_empty() {
        if out.len() >= max {
            *truncated = true;
            return;
        }
        out.push(Violation {
            instance_path: error.instance_location.to_string(),
            schema_path: schema_path(error),
            message: error.kind.to_string(),
        });
        return;
    }
    for cause in &error.causes {
        leaves(cause, max, out, truncated);
    }
}

fn describe_compile_error(error: &boon::CompileError) -> String {
    let text = format!("{error:#}").replace(SCHEMA_URL, "the schema");
    match error {
        boon::CompileError::ValidationError { .. } => {
            format!("it is not a valid JSON Schema: {text}")
        }
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send_sync<T: Send + Sync>() {}

    #[test]
    fn compiled_schemas_can_be_shared_between_threads() {
        send_sync::<CompiledSchema>();
    }
}
