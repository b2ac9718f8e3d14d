//! Reply routing in near-constant time: one pass of a `RegexSet` over the reply's text and one
//! of a `GlobSet` over its `custom_field` find every candidate rule at once, instead of trying
//! each rule's regex in turn. The first candidate in routing order whose `state` fits wins,
//! exactly as the linear scan would decide.

use super::model::{SharedRule, Trigger};

#[derive(Debug, Clone)]
pub struct ReplyIndex {
    /// Positions in `RuleSet::rules` of the enabled reply rules, in routing order.
    order: Vec<usize>,
    /// Pattern `i` belongs to `order[text_owner[i]]`.
    texts: Option<regex::RegexSet>,
    text_owner: Vec<usize>,
    /// Glob `i` belongs to `order[glob_owner[i]]`.
    globs: Option<globset::GlobSet>,
    glob_owner: Vec<usize>,
    has_text: Vec<bool>,
    has_glob: Vec<bool>,
    /// The sets could not be built (too large): fall back to trying each rule.
    linear: bool,
}

impl ReplyIndex {
    pub fn build(rules: &[SharedRule]) -> ReplyIndex {
        let mut index = ReplyIndex {
            order: Vec::new(),
            texts: None,
            text_owner: Vec::new(),
            globs: None,
            glob_owner: Vec::new(),
            has_text: Vec::new(),
            has_glob: Vec::new(),
            linear: false,
        };
        let mut patterns = Vec::new();
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
            index.has_text.push(t.text.is_some());
            index.has_glob.push(t.custom_field.is_some());
            if let Some(re) = &t.text {
                patterns.push(re.as_str().to_string());
                index.text_owner.push(slot);
            }
            if let Some(pattern) = &t.custom_field {
                match globset::Glob::new(pattern) {
                    Ok(g) => {
                        globs.add(g);
                        index.glob_owner.push(slot);
                    }
                    Err(_) => index.linear = true,
                }
            }
        }
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
        let n = self.order.len();
        let mut text_ok: Vec<bool> = self.has_text.iter().map(|has| !has).collect();
        if let Some(set) = &self.texts {
            for i in set.matches(text.trim()).iter() {
                text_ok[self.text_owner[i]] = true;
            }
        }
        let mut glob_ok: Vec<bool> = self.has_glob.iter().map(|has| !has).collect();
        if let (Some(set), Some(cf)) = (&self.globs, custom_field) {
            for i in set.matches(cf) {
                glob_ok[self.glob_owner[i]] = true;
            }
        }
        Some(
            (0..n)
                .filter(|&slot| text_ok[slot] && glob_ok[slot])
                .map(|slot| self.order[slot])
                .collect(),
        )
    }
}
