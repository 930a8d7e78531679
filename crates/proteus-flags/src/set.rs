//! The compiled flag set and read access to its flags.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use serde_json::{Map, Value};

use crate::logic::Node;

/// Whether a flag is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlagState {
    Enabled,
    Disabled,
}

/// The JSON type shared by all variants of a flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VariantKind {
    Boolean,
    String,
    /// Integers and floats alike, as flagd stores every number as a float.
    Number,
    Object,
}

impl VariantKind {
    /// `boolean`, `string`, `number` or `object`.
    pub fn as_str(self) -> &'static str {
        match self {
            VariantKind::Boolean => "boolean",
            VariantKind::String => "string",
            VariantKind::Number => "number",
            VariantKind::Object => "object",
        }
    }

    pub(crate) fn article_name(self) -> &'static str {
        match self {
            VariantKind::Boolean => "a boolean",
            VariantKind::String => "a string",
            VariantKind::Number => "a number",
            VariantKind::Object => "an object",
        }
    }
}

/// Variants of one flag, addressed by index once compiled.
#[derive(Debug)]
pub(crate) struct Variants {
    pub(crate) names: Box<[Box<str>]>,
    pub(crate) values: Box<[Value]>,
    /// Only for flags with many variants; a scan is faster for the usual handful.
    lookup: Option<HashMap<Box<str>, u16>>,
}

/// Above this many variants, name lookups use a hash map.
const VARIANTS_SCANNED_MAX: usize = 16;

impl Variants {
    pub(crate) fn new(variants: Vec<(String, Value)>) -> Self {
        let (names, values): (Vec<Box<str>>, Vec<Value>) = variants
            .into_iter()
            .map(|(name, value)| (name.into_boxed_str(), value))
            .unzip();
        let lookup = (names.len() > VARIANTS_SCANNED_MAX).then(|| {
            names
                .iter()
                .enumerate()
                .map(|(i, name)| (name.clone(), i as u16))
                .collect()
        });
        Self {
            names: names.into(),
            values: values.into(),
            lookup,
        }
    }

    pub(crate) fn find(&self, name: &str) -> Option<u16> {
        match &self.lookup {
            Some(lookup) => lookup.get(name).copied(),
            None => self
                .names
                .iter()
                .position(|n| &**n == name)
                .map(|i| i as u16),
        }
    }

    /// `a, b, c`, for messages.
    pub(crate) fn list(&self) -> String {
        let pairs: Vec<(String, ())> = self.names.iter().map(|n| (n.to_string(), ())).collect();
        crate::document::variant_list(&pairs)
    }
}

/// A flag ready to evaluate.
#[derive(Debug)]
pub(crate) struct CompiledFlag {
    pub(crate) key: Box<str>,
    pub(crate) state: FlagState,
    pub(crate) kind: VariantKind,
    pub(crate) variants: Variants,
    pub(crate) default_variant: Option<u16>,
    pub(crate) targeting: Option<Node>,
    /// Flag metadata merged over its document's metadata.
    pub(crate) metadata: Map<String, Value>,
    pub(crate) prerequisites: Box<[Prerequisite]>,
}

/// Resolved `{"flag": ..., "variants": [...]}`.
#[derive(Debug)]
pub(crate) struct Prerequisite {
    pub(crate) flag: u32,
    pub(crate) variants: Box<[u16]>,
}

/// A hash over 8-byte words for the flag-key index: each word is mixed in with a folded
/// multiplication (the 128-bit product's halves xored, as foldhash and wyhash do). Keys come
/// from the operator's own definitions (nobody can choose them to collide), and hashing a short
/// key a word at a time costs a fraction of SipHash (and of FNV's byte at a time), which
/// matters because every evaluation by key starts with it.
#[derive(Default)]
pub(crate) struct KeyHasher(u64);

impl KeyHasher {
    const MULTIPLIER: u64 = 0xf135_7aea_2e62_a9c5;

    #[inline]
    fn add(&mut self, word: u64) {
        let product = u128::from(self.0 ^ word) * u128::from(Self::MULTIPLIER);
        self.0 = (product as u64) ^ ((product >> 64) as u64);
    }
}

impl Hasher for KeyHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in words.by_ref() {
            self.add(u64::from_le_bytes(word.try_into().unwrap_or_default()));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            // The 1-7 trailing bytes and their count, so `"a\0"` and `"a"` differ.
            let tail = rest
                .iter()
                .rev()
                .fold(0u64, |word, &byte| (word << 8) | u64::from(byte));
            self.add(tail ^ ((rest.len() as u64) << 56));
        }
    }

    #[inline]
    fn write_u8(&mut self, byte: u8) {
        self.add(u64::from(byte));
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// The flag-key index.
pub(crate) type KeyIndex = HashMap<Box<str>, u32, BuildHasherDefault<KeyHasher>>;

/// Flags compiled from one or more documents, ready for evaluation. Immutable, `Send + Sync`:
/// build a new one to change flags and swap it in (e.g. behind an `ArcSwap`).
///
/// Build one with [`FlagSet::from_json`] or a [`FlagSetBuilder`](crate::FlagSetBuilder);
/// evaluate with [`FlagSet::evaluate`] or the typed helpers (`evaluate_bool`, ...).
#[derive(Debug)]
pub struct FlagSet {
    pub(crate) flags: Vec<CompiledFlag>,
    pub(crate) index: KeyIndex,
    pub(crate) segments: Vec<Node>,
    pub(crate) metadata: Map<String, Value>,
}

impl FlagSet {
    /// Number of flags.
    pub fn len(&self) -> usize {
        self.flags.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flags.is_empty()
    }

    /// The set's metadata: every document's `metadata`, later documents overriding earlier keys.
    pub fn metadata(&self) -> &Map<String, Value> {
        &self.metadata
    }

    /// The flag with this key. Keep the returned handle to evaluate it repeatedly without
    /// looking the key up each time.
    pub fn flag(&self, key: &str) -> Option<FlagRef<'_>> {
        self.index.get(key).map(|&id| FlagRef { set: self, id })
    }

    /// All flags, in no particular order.
    pub fn flags(&self) -> impl Iterator<Item = FlagRef<'_>> {
        (0..self.flags.len() as u32).map(move |id| FlagRef { set: self, id })
    }
}

/// A flag of a [`FlagSet`].
#[derive(Debug, Clone, Copy)]
pub struct FlagRef<'f> {
    pub(crate) set: &'f FlagSet,
    pub(crate) id: u32,
}

impl<'f> FlagRef<'f> {
    pub(crate) fn compiled(&self) -> &'f CompiledFlag {
        &self.set.flags[self.id as usize]
    }

    pub fn key(&self) -> &'f str {
        &self.compiled().key
    }

    /// The flag's position in its set, `0..set.len()`, in the order [`FlagSet::flags`] yields:
    /// lets a caller keep per-flag data in a `Vec` beside the set.
    pub fn index(&self) -> usize {
        self.id as usize
    }

    pub fn state(&self) -> FlagState {
        self.compiled().state
    }

    /// The type of the flag's variant values.
    pub fn kind(&self) -> VariantKind {
        self.compiled().kind
    }

    /// Variant names and values, in the order of the definition.
    pub fn variants(&self) -> impl Iterator<Item = (&'f str, &'f Value)> + use<'f> {
        let variants = &self.compiled().variants;
        variants
            .names
            .iter()
            .map(|name| &**name)
            .zip(variants.values.iter())
    }

    /// The default variant, if the flag has one.
    pub fn default_variant(&self) -> Option<&'f str> {
        let flag = self.compiled();
        flag.default_variant
            .map(|i| &*flag.variants.names[i as usize])
    }

    /// Whether the flag has targeting (besides `{}`).
    pub fn has_targeting(&self) -> bool {
        self.compiled().targeting.is_some()
    }

    /// The flag's metadata merged over its document's.
    pub fn metadata(&self) -> &'f Map<String, Value> {
        &self.compiled().metadata
    }

    /// Keys of the flags this one requires, in order.
    pub fn prerequisites(&self) -> impl Iterator<Item = &'f str> + use<'f> {
        let set = self.set;
        self.compiled()
            .prerequisites
            .iter()
            .map(move |p| &*set.flags[p.flag as usize].key)
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn key_index_finds_every_key_and_spreads_them() {
        let keys: Vec<String> = (0..5_000)
            .map(|i| format!("flag-{i}"))
            .chain(["", "a", "a\0", "checkout", "new-checkout-flow-v2"].map(String::from))
            .collect();
        let index: KeyIndex = keys
            .iter()
            .enumerate()
            .map(|(i, key)| (key.clone().into_boxed_str(), i as u32))
            .collect();
        for (i, key) in keys.iter().enumerate() {
            assert_eq!(index.get(key.as_str()), Some(&(i as u32)), "{key:?}");
        }
        assert_eq!(index.get("flag-5000"), None);
        // Distinct 64-bit hashes, and the low bits the table uses spread over 4,096 slots.
        let build = BuildHasherDefault::<KeyHasher>::default();
        let hashes: Vec<u64> = keys
            .iter()
            .map(|key| build.hash_one(key.as_str()))
            .collect();
        let distinct: std::collections::HashSet<u64> = hashes.iter().copied().collect();
        assert_eq!(distinct.len(), keys.len());
        let slots: std::collections::HashSet<u64> = hashes.iter().map(|h| h & 4095).collect();
        assert!(slots.len() > 2_500, "{} of 4096 slots used", slots.len());
    }
}
