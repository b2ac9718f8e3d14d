//! Which groups of plan keys exist, counted in memory: a plan's key reads
//! `kind|subject|rest` (`noreply|{custom_field}|…`), and every reply asks for the no-reply
//! plans of its conversation, which most conversations do not have. The count of a group
//! answers "none" without a scan of the `due_keys` tree.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

#[derive(Debug, Default)]
pub(super) struct DueGroups {
    /// Hash of the group (up to and including the key's second `|`) → plans in it. Two
    /// groups sharing a hash only cost a scan that finds nothing.
    counts: HashMap<u64, u32>,
}

/// `key` up to and including its second `|`.
fn group(key: &str) -> Option<&str> {
    let first = key.find('|')?;
    let second = first + 1 + key[first + 1..].find('|')?;
    Some(&key[..=second])
}

fn hash(group: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    group.hash(&mut h);
    h.finish()
}

impl DueGroups {
    /// A plan `key` is (about to be) stored.
    pub fn add(&mut self, key: &str) {
        if let Some(g) = group(key) {
            *self.counts.entry(hash(g)).or_default() += 1;
        }
    }

    /// A plan `key` was removed.
    pub fn remove(&mut self, key: &str) {
        if let Some(g) = group(key) {
            let h = hash(g);
            if let Some(n) = self.counts.get_mut(&h) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.counts.remove(&h);
                }
            }
        }
    }

    /// Whether no plan key can start with `prefix`: known only for a prefix that is a whole
    /// group (`kind|subject|`).
    pub fn surely_none(&self, prefix: &str) -> bool {
        group(prefix) == Some(prefix) && !self.counts.contains_key(&hash(prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_is_known_empty_only_when_it_is() {
        let mut g = DueGroups::default();
        g.add("noreply|cita-1|recordatorio#0");
        g.add("noreply|cita-1|recordatorio#1");
        g.add("offset|appt-9|rule");
        assert!(!g.surely_none("noreply|cita-1|"));
        assert!(g.surely_none("noreply|cita-2|"));
        // Not a whole group: not known, so scanned.
        assert!(!g.surely_none("noreply|cita-2|recordatorio"));
        assert!(!g.surely_none("noreply|"));
        g.remove("noreply|cita-1|recordatorio#0");
        assert!(!g.surely_none("noreply|cita-1|"));
        g.remove("noreply|cita-1|recordatorio#1");
        assert!(g.surely_none("noreply|cita-1|"));
        // A subject holding `|` is counted under its first part: looked up, never missed.
        g.add("noreply|a|b|rule");
        assert!(!g.surely_none("noreply|a|"));
    }
}
