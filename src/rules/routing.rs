//! Reply routing in constant time. Text patterns anchored at the start with a finite set of
//! literal prefixes (`^(1|confirmo)\b`, the usual reply keywords) are indexed by the first
//! bytes of those literals: a reply looks up its own first bytes and runs only the few
//! patterns found there. The other patterns go through one `RegexSet` pass. One pass of a
//! `GlobSet` over the distinct `custom_field` globs finds the globs that match; only those
//! rules (and the few without a text pattern) are looked at. The first candidate in routing
//! order whose `state` fits wins, exactly as the linear scan would decide.

use super::model::{SharedRule, Trigger};
use std::collections::HashMap;

/// Index keys are at most this many bytes of a literal prefix.
const KEY_BYTES: usize = 8;

#[derive(Debug, Clone)]
pub struct ReplyIndex {
    /// Positions in `RuleSet::rules` of the enabled reply rules, in routing order.
    order: Vec<usize>,
    /// Every text pattern: pattern `i` belongs to slot `text_owner[i]` (a slot is a position
    /// in `order`). Used for replies that do not start with ASCII, where Unicode case folding
    /// could match an indexed literal (`K` the Kelvin sign is `k`).
    texts: Option<regex::RegexSet>,
    text_owner: Vec<usize>,
    /// Lowercased first bytes (up to `KEY_BYTES`) of each literal prefix → slots.
    by_prefix: HashMap<Vec<u8>, Vec<usize>>,
    /// Each slot's own pattern, to confirm a prefix hit.
    slot_text: Vec<Option<regex::Regex>>,
    /// The patterns that cannot be indexed by prefix; pattern `i` belongs to `rest_owner[i]`.
    rest: Option<regex::RegexSet>,
    rest_owner: Vec<usize>,
    /// Slots without a text pattern: candidates for any text.
    any_text: Vec<usize>,
    /// Distinct globs; `glob_of[slot]` is the slot's glob, `None` for "any custom_field".
    globs: Option<globset::GlobSet>,
    n_globs: usize,
    glob_of: Vec<Option<usize>>,
    /// The sets could not be built (too large): fall back to trying each rule.
    linear: bool,
}

impl ReplyIndex {
    pub fn build(rules: &[SharedRule]) -> ReplyIndex {
        let mut index = ReplyIndex {
            order: Vec::new(),
            texts: None,
            text_owner: Vec::new(),
            by_prefix: HashMap::new(),
            slot_text: Vec::new(),
            rest: None,
            rest_owner: Vec::new(),
            any_text: Vec::new(),
            globs: None,
            n_globs: 0,
            glob_of: Vec::new(),
            linear: false,
        };
        let mut patterns = Vec::new();
        let mut rest_patterns = Vec::new();
        let mut distinct_globs: Vec<String> = Vec::new();
        let mut globs = globset::GlobSetBuilder::new();
        for (position, rule) in rules.iter().enumerate() {
            let Trigger::Reply(t) = &rule.trigger else {
                continue;
            };
            if !rule.enabled {
                continue;
            }
            let slot = index.order.len();
            index.order.push(position);
            index.slot_text.push(t.text.clone());
            match &t.text {
                Some(re) => {
                    patterns.push(re.as_str().to_string());
                    index.text_owner.push(slot);
                    match prefix_keys(re.as_str()) {
                        Some(keys) => {
                            for key in keys {
                                let slots = index.by_prefix.entry(key).or_default();
                                if slots.last() != Some(&slot) {
                                    slots.push(slot);
                                }
                            }
                        }
                        None => {
                            rest_patterns.push(re.as_str().to_string());
                            index.rest_owner.push(slot);
                        }
                    }
                }
                None => index.any_text.push(slot),
            }
            let glob = t.custom_field.as_ref().map(|pattern| {
                match distinct_globs.iter().position(|g| g == pattern) {
                    Some(i) => i,
                    None => {
                        match globset::Glob::new(pattern) {
                            Ok(g) => {
                                globs.add(g);
                            }
                            Err(_) => index.linear = true,
                        }
                        distinct_globs.push(pattern.clone());
                        distinct_globs.len() - 1
                    }
                }
            });
            index.glob_of.push(glob);
        }
        index.n_globs = distinct_globs.len();
        // Built the way the loader builds each rule's regex: case-insensitive.
        let set_of = |patterns: &[String]| {
            regex::RegexSetBuilder::new(patterns)
                .case_insensitive(true)
                .size_limit(64 << 20)
                .build()
        };
        match (set_of(&patterns), set_of(&rest_patterns)) {
            (Ok(all), Ok(rest)) => {
                index.texts = Some(all);
                index.rest = Some(rest);
            }
            _ => index.linear = true,
        }
        match globs.build() {
            Ok(set) => index.globs = Some(set),
            Err(_) => index.linear = true,
        }
        index
    }

    /// Whether routing goes through the sets (false: each rule is tried in turn).
    pub fn is_indexed(&self) -> bool {
        !self.linear
    }

    /// Positions in `RuleSet::rules` of the reply rules whose `custom_field` glob and text
    /// pattern both match, in routing order (`state` and `where:` are the caller's to check).
    /// `None` when the index could not be built and the caller must try each rule.
    pub fn candidates(&self, custom_field: Option<&str>, text: &str) -> Option<Vec<usize>> {
        if self.linear {
            return None;
        }
        let text = text.trim();
        let mut slots: Vec<usize> = self.any_text.clone();
        let head = &text.as_bytes()[..text.len().min(KEY_BYTES)];
        if head.is_ascii() {
            if let Some(set) = &self.rest {
                slots.extend(set.matches(text).iter().map(|i| self.rest_owner[i]));
            }
            let head = head.to_ascii_lowercase();
            for len in 1..=head.len() {
                for &slot in self.by_prefix.get(&head[..len]).into_iter().flatten() {
                    if self.slot_text[slot]
                        .as_ref()
                        .is_some_and(|re| re.is_match(text))
                    {
                        slots.push(slot);
                    }
                }
            }
        } else if let Some(set) = &self.texts {
            slots.extend(set.matches(text).iter().map(|i| self.text_owner[i]));
        }
        slots.sort_unstable();
        slots.dedup();
        let mut glob_matched = vec![false; self.n_globs];
        if let (Some(set), Some(cf)) = (&self.globs, custom_field) {
            for i in set.matches(cf) {
                glob_matched[i] = true;
            }
        }
        Some(
            slots
                .into_iter()
                .filter(|&slot| self.glob_of[slot].is_none_or(|g| glob_matched[g]))
                .map(|slot| self.order[slot])
                .collect(),
        )
    }
}

/// The index keys of a pattern anchored at the start whose every match begins with one of a
/// finite set of ASCII literals: each literal's first `KEY_BYTES` bytes, lowercased. `None`
/// when the pattern is not like that (it then goes through the `RegexSet`).
fn prefix_keys(pattern: &str) -> Option<Vec<Vec<u8>>> {
    use regex_syntax::hir::literal::{ExtractKind, Extractor};
    use regex_syntax::hir::Look;
    // Parsed case-sensitively: the literals come out as written, and both they and the reply
    // are lowercased for the lookup (case-insensitive, ASCII replies only: see `candidates`).
    let hir = regex_syntax::ParserBuilder::new()
        .build()
        .parse(pattern)
        .ok()?;
    if !hir.properties().look_set_prefix().contains(Look::Start) {
        return None;
    }
    let seq = Extractor::new().kind(ExtractKind::Prefix).extract(&hir);
    let literals = seq.literals()?;
    if literals.is_empty() {
        return None;
    }
    let mut keys = Vec::new();
    for literal in literals {
        let bytes = literal.as_bytes();
        if bytes.is_empty() || !bytes.is_ascii() {
            return None;
        }
        let key = bytes[..bytes.len().min(KEY_BYTES)].to_ascii_lowercase();
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    Some(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchored_keyword_patterns_are_indexed_by_their_literals() {
        let keys = |p: &str| {
            prefix_keys(p).map(|ks| {
                ks.into_iter()
                    .map(|k| String::from_utf8(k).unwrap())
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(
            keys(r"^(1|Confirmo)\b"),
            Some(vec!["1".into(), "confirmo".into()])
        );
        assert_eq!(keys(r"^reprogramacion\b"), Some(vec!["reprogra".into()]));
        assert_eq!(
            keys(r"^[1-3]$"),
            Some(vec!["1".into(), "2".into(), "3".into()])
        );
        assert_eq!(keys(r"confirmo"), None, "not anchored");
        assert_eq!(keys(r"(?m)^si"), None, "anchored at a line, not the text");
        assert_eq!(keys(r"^\s*si"), None, "no finite prefix");
        assert_eq!(keys(r"^(si|sí)"), None, "a non-ASCII literal");
        assert_eq!(keys(r"^(si)?"), None, "may match empty");
    }
}
