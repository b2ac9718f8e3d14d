//! Reply routing in near-constant time: one pass of a `RegexSet` over the reply's text finds
//! the rules whose text matches, one pass of a `GlobSet` over the distinct `custom_field`
//! globs finds the globs that match; only those rules (and the few without a text pattern) are
//! looked at. The first candidate in routing order whose `state` fits wins, exactly as the
//! linear scan would decide.

use super::model::{SharedRule, Trigger};

#[derive(Debug, Clone)]
pub struct ReplyIndex {
    /// Positions in `RuleSet::rules` of the enabled reply rules, in routing order.
    order: Vec<usize>,
    /// Pattern `i` belongs to slot `text_owner[i]` (a slot is a position in `order`).
    texts: Option<regex::RegexSet>,
    text_owner: Vec<usize>,
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
            any_text: Vec::new(),
            globs: None,
            n_globs: 0,
            glob_of: Vec::new(),
            linear: false,
        };
        let mut patterns = Vec::new();
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
            match &t.text {
                Some(re) => {
                    patterns.push(re.as_str().to_string());
                    index.text_owner.push(slot);
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
        match regex::RegexSetBuilder::new(&patterns)
            .case_insensitive(true)
            .size_limit(64 << 20)
            .build()
        {
            Ok(set) => index.texts = Some(set),
            Err(_) => index.linear = true,
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
        let mut slots: Vec<usize> = self.any_text.clone();
        if let Some(set) = &self.texts {
            slots.extend(set.matches(text.trim()).iter().map(|i| self.text_owner[i]));
        }
        slots.sort_unstable();
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
