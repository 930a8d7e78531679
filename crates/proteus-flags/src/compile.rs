//! Building a [`FlagSet`]: documents are read, merged (later documents override earlier flag
//! keys and segment names), and every rule is compiled once.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::document::{Diagnostics, Document, FlagDefinition, parse_document};
use crate::error::{DefinitionError, DefinitionErrorKind as Kind, DefinitionErrors};
use crate::logic::{Node, RuleCompiler};
use crate::path::Path;
use crate::set::{CompiledFlag, FlagSet, KeyIndex, Prerequisite, Variants};
use crate::{DOCUMENT_BYTES_MAX, FLAGS_MAX, PREREQUISITE_DEPTH_MAX};

/// How strictly definitions are checked; see the [crate documentation](crate#validation-modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Validation {
    /// Reject every problem, including those flagd tolerates.
    #[default]
    Strict,
    /// Load what flagd loads and evaluate it as flagd does; tolerated problems are warnings.
    FlagdCompatible,
}

/// A compiled set with the problems tolerated in [`Validation::FlagdCompatible`] mode.
#[derive(Debug)]
pub struct Compiled {
    pub flag_set: FlagSet,
    /// Problems that strict validation would have rejected (always empty in strict mode).
    pub warnings: Vec<DefinitionError>,
}

/// Collects documents and compiles them into one [`FlagSet`].
///
/// ```
/// use proteus_flags::{FlagSetBuilder, Validation};
///
/// let compiled = FlagSetBuilder::new(Validation::FlagdCompatible)
///     .with_json(r#"{"flags": {"a": {"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "on"}}}"#)
///     .with_json(r#"{"flags": {"a": {"state": "DISABLED", "variants": {"on": true}, "defaultVariant": "on"}}}"#)
///     .build()
///     .unwrap();
/// assert_eq!(compiled.flag_set.len(), 1); // the second document overrides `a`
/// ```
#[derive(Debug, Default)]
pub struct FlagSetBuilder {
    validation: Validation,
    documents: Vec<Result<Value, Kind>>,
}

impl FlagSetBuilder {
    pub fn new(validation: Validation) -> Self {
        Self {
            validation,
            documents: Vec::new(),
        }
    }

    /// Adds a document given as JSON text (at most [`DOCUMENT_BYTES_MAX`] bytes).
    pub fn with_json(mut self, text: &str) -> Self {
        let document = if text.len() > DOCUMENT_BYTES_MAX {
            Err(Kind::DocumentTooLarge {
                bytes: text.len(),
                max: DOCUMENT_BYTES_MAX,
            })
        } else {
            serde_json::from_str(text).map_err(|e| Kind::Json(e.to_string()))
        };
        self.documents.push(document);
        self
    }

    /// Adds a document already parsed.
    pub fn with_value(mut self, document: Value) -> Self {
        self.documents.push(Ok(document));
        self
    }

    /// Compiles all documents, or returns every problem found (up to
    /// [`DEFINITION_ERRORS_MAX`](crate::DEFINITION_ERRORS_MAX)).
    pub fn build(self) -> Result<Compiled, DefinitionErrors> {
        let mut diag = Diagnostics::new(self.validation);
        let mut documents = Vec::with_capacity(self.documents.len());
        for (index, document) in self.documents.into_iter().enumerate() {
            diag.document = index;
            match document {
                Ok(value) => documents.push(parse_document(value, &mut diag)),
                Err(kind) => {
                    diag.error(&Path::root(), kind);
                    documents.push(Document::default());
                }
            }
        }
        let set = compile_documents(documents, &mut diag);
        if diag.errors.is_empty() {
            Ok(Compiled {
                flag_set: set,
                warnings: diag.warnings,
            })
        } else {
            Err(DefinitionErrors(diag.errors))
        }
    }
}

impl FlagSet {
    /// Compiles one document with [`Validation::Strict`].
    pub fn from_json(text: &str) -> Result<FlagSet, DefinitionErrors> {
        FlagSetBuilder::new(Validation::Strict)
            .with_json(text)
            .build()
            .map(|compiled| compiled.flag_set)
    }
}

/// A flag definition with the document it came from.
struct Source {
    document: usize,
    definition: FlagDefinition,
}

fn compile_documents(mut documents: Vec<Document>, diag: &mut Diagnostics) -> FlagSet {
    // Merge: later documents override earlier flags and segments; metadata merges key by key.
    let mut sources: Vec<Source> = Vec::new();
    let mut index = KeyIndex::default();
    let mut segment_sources: Vec<(String, usize, Value)> = Vec::new();
    let mut segment_ids: HashMap<String, u32> = HashMap::new();
    let mut set_metadata = Map::new();
    for (document_index, document) in documents.iter_mut().enumerate() {
        for definition in std::mem::take(&mut document.flags) {
            let source = Source {
                document: document_index,
                definition,
            };
            match index.get(source.definition.key.as_str()) {
                Some(&id) => sources[id as usize] = source,
                None => {
                    index.insert(source.definition.key.as_str().into(), sources.len() as u32);
                    sources.push(source);
                }
            }
        }
        for (name, rule) in std::mem::take(&mut document.segments) {
            match segment_ids.get(&name) {
                Some(&id) => segment_sources[id as usize] = (name, document_index, rule),
                None => {
                    segment_ids.insert(name.clone(), segment_sources.len() as u32);
                    segment_sources.push((name, document_index, rule));
                }
            }
        }
        set_metadata.extend(
            document
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
    }
    if sources.len() > FLAGS_MAX {
        diag.document = 0;
        diag.error(
            &Path::of(&["flags"]),
            Kind::TooMany {
                what: "flags",
                count: sources.len(),
                max: FLAGS_MAX,
            },
        );
        sources.truncate(FLAGS_MAX);
    }

    let segments: Vec<Node> = segment_sources
        .iter()
        .map(|(name, document_index, rule)| {
            diag.document = *document_index;
            let evaluators = &documents[*document_index].evaluators;
            RuleCompiler::new(&mut *diag, evaluators, &segment_ids, None)
                .for_segments()
                .compile_rule(rule, Path::of(&["segments", name]))
        })
        .collect();

    if diag.is_strict() {
        // Evaluators no flag uses are still checked (as plain values, not targeting results).
        for (document_index, document) in documents.iter().enumerate() {
            diag.document = document_index;
            for (name, rule) in &document.evaluators {
                RuleCompiler::new(&mut *diag, &document.evaluators, &segment_ids, None)
                    .compile_evaluator(name, rule);
            }
        }
    }

    let mut flags = Vec::with_capacity(sources.len());
    for source in &mut sources {
        diag.document = source.document;
        let document = &documents[source.document];
        flags.push(compile_flag(
            &mut source.definition,
            document,
            &segment_ids,
            diag,
        ));
    }
    resolve_prerequisites(&mut flags, &sources, &index, diag);

    FlagSet {
        flags,
        index,
        segments,
        metadata: set_metadata,
    }
}

fn compile_flag(
    definition: &mut FlagDefinition,
    document: &Document,
    segment_ids: &HashMap<String, u32>,
    diag: &mut Diagnostics,
) -> CompiledFlag {
    let variants = Variants::new(std::mem::take(&mut definition.variants));
    let default_variant = definition
        .default_variant
        .as_deref()
        .and_then(|name| variants.find(name));
    let targeting = definition.targeting.as_ref().map(|rule| {
        RuleCompiler::new(diag, &document.evaluators, segment_ids, Some(&variants))
            .compile_rule(rule, definition.path.key("targeting"))
    });
    let mut metadata = document.metadata.clone();
    metadata.extend(std::mem::take(&mut definition.metadata));
    CompiledFlag {
        key: definition.key.as_str().into(),
        state: definition.state,
        kind: definition.kind,
        variants,
        default_variant,
        targeting,
        metadata,
        prerequisites: Box::new([]),
    }
}

/// Resolves prerequisite flags and variants to indexes, then rejects cycles and chains deeper
/// than [`PREREQUISITE_DEPTH_MAX`].
fn resolve_prerequisites(
    flags: &mut [CompiledFlag],
    sources: &[Source],
    index: &KeyIndex,
    diag: &mut Diagnostics,
) {
    let mut edges: Vec<Vec<(u32, usize)>> = vec![Vec::new(); flags.len()];
    for (id, source) in sources.iter().enumerate().take(flags.len()) {
        diag.document = source.document;
        let path = source.definition.path.key("prerequisites");
        let mut resolved = Vec::with_capacity(source.definition.prerequisites.len());
        for (i, prerequisite) in source.definition.prerequisites.iter().enumerate() {
            let item_path = path.index(i);
            let Some(&target) = index
                .get(prerequisite.flag.as_str())
                .filter(|&&t| (t as usize) < flags.len())
            else {
                diag.error(
                    &item_path.key("flag"),
                    Kind::UnknownPrerequisite(prerequisite.flag.clone()),
                );
                continue;
            };
            let target_variants = &flags[target as usize].variants;
            let mut variants = Vec::with_capacity(prerequisite.variants.len());
            for (j, name) in prerequisite.variants.iter().enumerate() {
                match target_variants.find(name) {
                    Some(v) => variants.push(v),
                    None => {
                        let known = target_variants.list();
                        let error = Kind::UnknownVariant {
                            name: name.clone(),
                            known,
                        };
                        diag.error(&item_path.key("variants").index(j), error);
                    }
                }
            }
            edges[id].push((target, i));
            resolved.push(Prerequisite {
                flag: target,
                variants: variants.into(),
            });
        }
        flags[id].prerequisites = resolved.into();
    }
    check_prerequisite_graph(&edges, flags, sources, diag);
}

/// Depth-first search with an explicit stack (no recursion on user-controlled depth).
fn check_prerequisite_graph(
    edges: &[Vec<(u32, usize)>],
    flags: &[CompiledFlag],
    sources: &[Source],
    diag: &mut Diagnostics,
) {
    const WHITE: u8 = 0;
    const GRAY: u8 = 1;
    const BLACK: u8 = 2;
    let mut color = vec![WHITE; edges.len()];
    let mut depth = vec![0usize; edges.len()];
    for start in 0..edges.len() {
        if color[start] != WHITE {
            continue;
        }
        color[start] = GRAY;
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&(target, prerequisite)) = edges[node].get(*next) {
                *next += 1;
                let target = target as usize;
                match color[target] {
                    WHITE => {
                        color[target] = GRAY;
                        stack.push((target, 0));
                    }
                    GRAY => {
                        let from = stack.iter().position(|&(n, _)| n == target).unwrap_or(0);
                        let mut cycle: Vec<&str> =
                            stack[from..].iter().map(|&(n, _)| &*flags[n].key).collect();
                        cycle.push(&flags[target].key);
                        let source = &sources[node];
                        diag.document = source.document;
                        let path = source
                            .definition
                            .path
                            .key("prerequisites")
                            .index(prerequisite)
                            .key("flag");
                        diag.error(&path, Kind::PrerequisiteCycle(cycle.join(" -> ")));
                    }
                    _ => {}
                }
            } else {
                let below = edges[node].iter().map(|&(t, _)| depth[t as usize]).max();
                depth[node] = below.map_or(0, |d| d + 1);
                if depth[node] > PREREQUISITE_DEPTH_MAX && below == Some(PREREQUISITE_DEPTH_MAX) {
                    let source = &sources[node];
                    diag.document = source.document;
                    let path = source.definition.path.key("prerequisites");
                    diag.error(&path, Kind::PrerequisitesTooDeep(PREREQUISITE_DEPTH_MAX));
                }
                color[node] = BLACK;
                stack.pop();
            }
        }
    }
}
