//! Reading `rules/*.yaml` and `templates/*.yaml` into the typed model, collecting every problem
//! with the line and column where it was written.
//!
//! The "raw" form of a file is its positioned YAML tree (`yaml::Node`); each rule and template
//! is checked key by key against the shape PRODUCT.md documents, so one run reports all
//! problems of all files instead of stopping at the first, as serde would.

use super::diagnostic::{did_you_mean, suggestion, Diagnostic};
use super::model::*;
use super::yaml::{self, Node, NodeKind, Pos};
use crate::config::Config;
use crate::render::Renderer;
use chrono_tz::Tz;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Files bigger than this are refused unread: a rule file is a few kilobytes.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

pub const APPOINTMENT_STATUSES: &[&str] =
    &["scheduled", "confirmed", "cancelled", "attended", "no_show"];

/// Top-level names of the rendering context (see `RuleSet::render_send`).
pub const CONTEXT_ROOTS: &[&str] = &[
    "appointment",
    "reply",
    "conversation",
    "message",
    "rule",
    "now",
];

const RULE_KEYS: &[&str] = &[
    "name",
    "description",
    "enabled",
    "trigger",
    "for_each",
    "where",
    "actions",
];
const TRIGGER_KINDS: &[&str] = &[
    "cron",
    "before",
    "after",
    "reply",
    "status",
    "no_reply",
    "appointment",
];
const TRIGGER_KEYS: &[&str] = &[
    "cron",
    "before",
    "after",
    "reply",
    "status",
    "no_reply",
    "appointment",
    "timezone",
    "catch_up",
    "late",
    "rule",
];
const ACTION_KINDS: &[&str] = &["send", "set_state", "update_appointment", "notify"];
const SEND_KEYS: &[&str] = &["template", "to", "variables", "media", "custom_field"];
const TEMPLATE_KEYS: &[&str] = &["id", "name", "body", "variables"];
const MEDIA_KINDS: &[&str] = &[
    "pdf", "jpg", "mp3", "txt", "docx", "xlsx", "zip", "mp4", "pptx", "png", "jpeg",
];

const HANDLEBARS_HINT: &str = "values are Handlebars: `{{appointment.paciente}}`, `{{fecha appointment.start}}`; helpers: fecha, fecha_corta, hora, primer_nombre, mayusculas, minusculas, capitalizar, pesos, default, eq";

/// What a load produced before it is split into success or failure.
pub(crate) struct Outcome {
    pub rules: Vec<SharedRule>,
    pub templates: BTreeMap<u32, Template>,
    pub renderer: Renderer,
    pub diagnostics: Vec<Diagnostic>,
}

/// Where a rule's references were written, for checks that need every rule loaded first.
struct RuleRefs {
    name: Location,
    trigger: Location,
    reply_key: Option<Location>,
    rule_ref: Option<(String, Location, &'static str)>,
}

struct State<'c> {
    config: &'c Config,
    diagnostics: Vec<Diagnostic>,
    renderer: Renderer,
    templates: BTreeMap<u32, Template>,
    /// Template ids whose file had errors: sends naming them are not checked further.
    broken_templates: Vec<u32>,
    rules: Vec<(Rule, RuleRefs)>,
}

/// Loads and checks both folders. Never stops at the first problem.
pub(crate) fn load_dirs(rules_dir: &Path, templates_dir: &Path, config: &Config) -> Outcome {
    let mut diagnostics = Vec::new();
    let template_files = read_folder(
        templates_dir,
        "templates",
        "templates_dir",
        &mut diagnostics,
    );
    let rule_files = read_folder(rules_dir, "rules", "rules_dir", &mut diagnostics);
    let mut outcome = load_sources(&template_files, &rule_files, config);
    diagnostics.append(&mut outcome.diagnostics);
    outcome.diagnostics = diagnostics;
    outcome
}

/// Loads from texts already read: `(path shown in messages, contents)`, in routing order.
pub(crate) fn load_sources(
    template_files: &[(PathBuf, String)],
    rule_files: &[(PathBuf, String)],
    config: &Config,
) -> Outcome {
    let mut state = State {
        config,
        diagnostics: Vec::new(),
        renderer: Renderer::new(),
        templates: BTreeMap::new(),
        broken_templates: Vec::new(),
        rules: Vec::new(),
    };
    for (path, text) in template_files {
        if let Some(root) = state.parse(path, text) {
            FileWalk::new(&mut state, path, text).template_file(&root);
        }
    }
    for (path, text) in rule_files {
        if let Some(root) = state.parse(path, text) {
            FileWalk::new(&mut state, path, text).rules_file(&root);
        }
    }
    state.cross_checks();
    Outcome {
        rules: state
            .rules
            .into_iter()
            .map(|(rule, _)| SharedRule::new(rule))
            .collect(),
        templates: state.templates,
        renderer: state.renderer,
        diagnostics: state.diagnostics,
    }
}

/// The `.yaml`/`.yml` files of `dir` in name order, read; problems are pushed to `diagnostics`.
fn read_folder(
    dir: &Path,
    what: &str,
    setting: &str,
    diagnostics: &mut Vec<Diagnostic>,
) -> Vec<(PathBuf, String)> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            let problem = if e.kind() == std::io::ErrorKind::NotFound {
                "does not exist".to_string()
            } else {
                format!("cannot be read ({e})")
            };
            diagnostics.push(
                Diagnostic::error(format!("{what} folder `{}` {problem}", dir.display()))
                    .in_file(dir)
                    .hint(format!(
                        "create it, or set `{setting}` in recuerda.yaml to the folder that holds your {what} files"
                    )),
            );
            return Vec::new();
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !name.starts_with('.')
                && (name.ends_with(".yaml") || name.ends_with(".yml"))
                && p.is_file()
        })
        .collect();
    paths.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    let mut files = Vec::new();
    for path in paths {
        match read_bounded(&path) {
            Ok(text) => files.push((path, text)),
            Err(d) => diagnostics.push(*d),
        }
    }
    files
}

fn read_bounded(path: &Path) -> Result<String, Box<Diagnostic>> {
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if size > MAX_FILE_BYTES {
        return Err(Box::new(Diagnostic::error(format!(
            "`{}` is {size} bytes, over the {MAX_FILE_BYTES}-byte limit for a rule or template file",
            path.display()
        ))
        .in_file(path)
        .hint("split it into several files; each rule file is usually a few kilobytes")));
    }
    let bytes = std::fs::read(path).map_err(|e| {
        Box::new(Diagnostic::error(format!("cannot read `{}`: {e}", path.display())).in_file(path))
    })?;
    String::from_utf8(bytes).map_err(|e| {
        let line = e.as_bytes()[..e.utf8_error().valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1;
        Box::new(
            Diagnostic::error(format!(
                "`{}` is not UTF-8 text (line {line})",
                path.display()
            ))
            .in_file(path)
            .hint("save the file as UTF-8"),
        )
    })
}

impl State<'_> {
    fn parse(&mut self, path: &Path, text: &str) -> Option<Node> {
        if text.len() as u64 > MAX_FILE_BYTES {
            self.diagnostics.push(
                Diagnostic::error(format!(
                    "`{}` is over the {MAX_FILE_BYTES}-byte limit for a rule or template file",
                    path.display()
                ))
                .in_file(path),
            );
            return None;
        }
        match yaml::parse(text) {
            Ok(root) => Some(root),
            Err(e) => {
                let pos = e.pos.unwrap_or(Pos { line: 1, column: 1 });
                let prefix = if e.syntax { "invalid YAML: " } else { "" };
                let mut d =
                    Diagnostic::error(format!("{prefix}{}", e.message)).at(location(path, pos));
                if e.syntax {
                    d = d.hint("check the indentation and quoting around this line; quote text that holds `: `, `{`, `[` or `#`");
                }
                self.diagnostics.push(d);
                None
            }
        }
    }

    /// Checks that need every file: duplicate names, references between rules, shadowed replies.
    fn cross_checks(&mut self) {
        let mut first_seen: BTreeMap<String, Location> = BTreeMap::new();
        let names: Vec<String> = self.rules.iter().map(|(r, _)| r.name.clone()).collect();
        let mut found = Vec::new();
        for (rule, refs) in &self.rules {
            if let Some(first) = first_seen.get(&rule.name) {
                found.push(
                    Diagnostic::error(format!(
                        "rule `{}`: the name is used by another rule too",
                        rule.name
                    ))
                    .at(refs.name.clone())
                    .note(first.clone(), "first defined here")
                    .hint("rule names must be unique across all files in rules/: rename one"),
                );
            } else {
                first_seen.insert(rule.name.clone(), refs.name.clone());
            }
            if let Some((target, at, key)) = &refs.rule_ref {
                if !names.contains(target) {
                    let mut d = Diagnostic::error(format!(
                        "rule `{}`: `{key}` names rule `{target}`, which does not exist",
                        rule.name
                    ))
                    .at(at.clone());
                    d = match did_you_mean(target, names.iter().map(String::as_str)) {
                        Some(close) => d.hint(format!("did you mean `{close}`?")),
                        None => d.hint("write the `name` of a rule in rules/"),
                    };
                    found.push(d);
                }
            }
        }
        found.extend(self.shadowed_replies());
        self.diagnostics.extend(found);
    }

    /// Reply rules that can never match because an earlier one always matches first.
    fn shadowed_replies(&self) -> Vec<Diagnostic> {
        let mut out = Vec::new();
        let replies: Vec<(&Rule, &ReplyTrigger, &RuleRefs)> = self
            .rules
            .iter()
            .filter(|(r, _)| r.enabled)
            .filter_map(|(r, refs)| match &r.trigger {
                Trigger::Reply(t) => Some((r, t, refs)),
                _ => None,
            })
            .collect();
        for (i, (rule, trigger, refs)) in replies.iter().enumerate() {
            let earlier = replies[..i]
                .iter()
                .find(|(e_rule, e, _)| e_rule.conditions.is_empty() && covers(e, trigger));
            if let Some((e_rule, _, e_refs)) = earlier {
                out.push(
                    Diagnostic::warning(format!(
                        "rule `{}` can never match: rule `{}` comes first and matches every reply it would",
                        rule.name, e_rule.name
                    ))
                    .at(refs.reply_key.clone().unwrap_or_else(|| refs.trigger.clone()))
                    .note(e_refs.trigger.clone(), format!("rule `{}` is here", e_rule.name))
                    .hint("replies are tried in file-name order, then rule order, and the first match wins: move the catch-all rule last, or give it a `text:` or `state:`"),
                );
            }
        }
        out
    }
}

/// True when every reply `later` matches is matched by `earlier` too.
fn covers(earlier: &ReplyTrigger, later: &ReplyTrigger) -> bool {
    let field = match (&earlier.custom_field, &later.custom_field) {
        (None, _) => true,
        (Some(e), _) if e == "*" || e == "**" => true,
        (Some(e), Some(l)) => e == l,
        (Some(_), None) => false,
    };
    let text = match (&earlier.text, &later.text) {
        (None, _) => true,
        (Some(e), _) if matches!(e.as_str(), ".*" | "^.*" | "^.*$" | "(?s).*" | "") => true,
        (Some(e), Some(l)) => e.as_str() == l.as_str(),
        (Some(_), None) => false,
    };
    let state = match (&earlier.state, &later.state) {
        (None, _) => true,
        (Some(e), Some(l)) => e == l,
        (Some(_), None) => false,
    };
    field && text && state
}

/// How messages name a map: `the rule`, or `` `send` `` for keys written in the file.
fn place(what: &str) -> String {
    match what {
        "rule" | "file" | "template" | "action" => format!("the {what}"),
        _ => format!("`{what}`"),
    }
}

fn location(path: &Path, pos: Pos) -> Location {
    Location {
        file: path.to_path_buf(),
        line: pos.line,
        column: pos.column,
    }
}

/// A map's entries by key, after unknown and duplicate keys were reported.
struct Fields<'n> {
    pos: Pos,
    entries: Vec<(&'n str, &'n Node, &'n Node)>,
    /// Known keys an unknown key was taken for (`triger` → `trigger`): not reported missing.
    suggested: Vec<&'static str>,
}

impl<'n> Fields<'n> {
    fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, _, _)| *k == key)
            .map(|(_, _, v)| *v)
    }

    fn key(&self, key: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, _, _)| *k == key)
            .map(|(_, k, _)| *k)
    }
}

/// Walks one file, reporting problems against it.
struct FileWalk<'s, 'c> {
    state: &'s mut State<'c>,
    path: &'s Path,
    source: &'s str,
    /// `rule `x`` or `template `990``: the start of every message.
    subject: String,
    errors_before: usize,
}

impl<'s, 'c> FileWalk<'s, 'c> {
    fn new(state: &'s mut State<'c>, path: &'s Path, source: &'s str) -> Self {
        let errors_before = state.diagnostics.len();
        FileWalk {
            state,
            path,
            source,
            subject: String::new(),
            errors_before,
        }
    }

    fn loc(&self, pos: Pos) -> Location {
        location(self.path, pos)
    }

    fn push(&mut self, d: Diagnostic) {
        self.state.diagnostics.push(d);
    }

    fn message(&self, text: &str) -> String {
        if self.subject.is_empty() {
            text.to_string()
        } else {
            format!("{}: {text}", self.subject)
        }
    }

    fn error(&mut self, pos: Pos, text: impl AsRef<str>, hint: impl Into<String>) {
        let hint = hint.into();
        let mut d = Diagnostic::error(self.message(text.as_ref())).at(self.loc(pos));
        if !hint.is_empty() {
            d = d.hint(hint);
        }
        self.push(d);
    }

    fn warning(&mut self, pos: Pos, text: impl AsRef<str>, hint: impl Into<String>) {
        let hint = hint.into();
        let mut d = Diagnostic::warning(self.message(text.as_ref())).at(self.loc(pos));
        if !hint.is_empty() {
            d = d.hint(hint);
        }
        self.push(d);
    }

    fn has_new_errors(&self) -> bool {
        self.state.diagnostics[self.errors_before..]
            .iter()
            .any(Diagnostic::is_error)
    }

    /// `node` as a map whose keys are among `known`; unknown keys get a "did you mean".
    fn fields<'n>(
        &mut self,
        node: &'n Node,
        what: &str,
        known: &[&'static str],
    ) -> Option<Fields<'n>> {
        let Some(entries) = node.as_map() else {
            self.error(
                node.pos,
                format!(
                    "`{what}` must be a map of `key: value`, found {}",
                    node.describe()
                ),
                format!("expected keys: {}", known.join(", ")),
            );
            return None;
        };
        let mut fields = Fields {
            pos: node.pos,
            entries: Vec::new(),
            suggested: Vec::new(),
        };
        for (key, value) in entries {
            let Some(name) = key.scalar_text() else {
                self.error(
                    key.pos,
                    format!(
                        "a key in `{what}` must be a plain name, found {}",
                        key.describe()
                    ),
                    "",
                );
                continue;
            };
            if !known.is_empty() && !known.contains(&name) {
                let hint = match did_you_mean(name, known.iter().copied()) {
                    Some(close) => {
                        if let Some(k) = known.iter().find(|k| **k == close) {
                            fields.suggested.push(k);
                        }
                        format!("did you mean `{close}`?")
                    }
                    None => format!("{} takes: {}", place(what), known.join(", ")),
                };
                self.error(
                    key.pos,
                    format!("unknown key `{name}` in {}", place(what)),
                    hint,
                );
                continue;
            }
            if fields.get(name).is_some() {
                self.error(
                    key.pos,
                    format!("`{name}` is written twice in {}", place(what)),
                    "keep one: YAML would silently use the last",
                );
                continue;
            }
            fields.entries.push((name, key, value));
        }
        Some(fields)
    }

    fn required<'n>(
        &mut self,
        fields: &Fields<'n>,
        key: &str,
        what: &str,
        example: &str,
    ) -> Option<&'n Node> {
        let value = fields.get(key);
        if value.is_none() && !fields.suggested.contains(&key) {
            self.error(
                fields.pos,
                format!("{} has no `{key}`", place(what)),
                format!("add it, e.g. `{key}: {example}`"),
            );
        }
        value
    }

    /// Any non-null scalar, as text (`990` and `true` included).
    fn text(&mut self, node: &Node, what: &str) -> Option<String> {
        match node.scalar_text() {
            Some(_) if node.is_null() => {
                self.error(
                    node.pos,
                    format!("`{what}` is empty"),
                    "write a value after the `:`",
                );
                None
            }
            Some(text) => Some(text.to_string()),
            None => {
                self.error(
                    node.pos,
                    format!("`{what}` must be text, found {}", node.describe()),
                    "",
                );
                None
            }
        }
    }

    fn bool(&mut self, node: &Node, what: &str) -> Option<bool> {
        match node.to_json_scalar() {
            Some(serde_json::Value::Bool(b)) if node.as_str().is_none() => Some(b),
            _ => {
                self.error(
                    node.pos,
                    format!(
                        "`{what}` must be `true` or `false`, found {}",
                        node.describe()
                    ),
                    "",
                );
                None
            }
        }
    }

    fn duration(&mut self, node: &Node, what: &str) -> Option<Duration> {
        let text = self.text(node, what)?;
        match crate::duration::parse_duration(&text) {
            Ok(d) if d.is_zero() => {
                self.error(
                    node.pos,
                    format!("`{what}` is zero"),
                    "write a duration such as `2h`",
                );
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.error(node.pos, format!("`{what}`: {e}"), "");
                None
            }
        }
    }

    /// One of `choices`, with a suggestion when close.
    fn choice(&mut self, node: &Node, what: &str, choices: &[&str]) -> Option<String> {
        let text = self.text(node, what)?;
        if choices.contains(&text.as_str()) {
            return Some(text);
        }
        let close = suggestion(&text, choices.iter().copied());
        self.error(
            node.pos,
            format!("`{what}: {text}` is not one of {}", choices.join(", ")),
            close,
        );
        None
    }

    /// Compiles a Handlebars string under `key`; a problem points inside the string.
    fn compile(&mut self, key: &str, node: &Node, what: &str) -> Option<String> {
        let source = self.text(node, what)?;
        match self.state.renderer.register(key, &source) {
            Ok(()) => Some(key.to_string()),
            Err(e) => {
                let pos = match (e.line, e.column) {
                    (Some(line), Some(column)) => node.pos_inside(self.source, line, column),
                    _ => node.pos,
                };
                self.error(pos, format!("`{what}`: {}", e.message), HANDLEBARS_HINT);
                None
            }
        }
    }

    // ---- templates ---------------------------------------------------------------------

    fn template_file(&mut self, root: &Node) {
        let file_name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.subject = format!("template file `{file_name}`");
        let Some(fields) = self.fields(root, "template", TEMPLATE_KEYS) else {
            return;
        };
        let id_node = self.required(&fields, "id", "template", "990");
        let name_node = self.required(&fields, "name", "template", "Recordatorio de cita");
        let body_node = self.required(&fields, "body", "template", "\"Hola *{1}* …\"");
        let vars_node = self.required(
            &fields,
            "variables",
            "template",
            "[\"{{appointment.paciente}}\"]",
        );
        let id = id_node.and_then(|n| match n.to_json_scalar() {
            Some(serde_json::Value::Number(num)) if n.as_str().is_none() => num
                .as_u64()
                .filter(|v| *v > 0)
                .and_then(|v| u32::try_from(v).ok()),
            _ => None,
        });
        if let (Some(n), None) = (id_node, id) {
            self.error(
                n.pos,
                format!(
                    "`id` must be the provider's numeric template id, found {}",
                    n.describe()
                ),
                "e.g. `id: 990`; `recuerda templates` lists the account's templates",
            );
        }
        if let Some(id) = id {
            self.subject = format!("template `{id}`");
        }
        let name = name_node.and_then(|n| self.text(n, "name"));
        let body = body_node.and_then(|n| self.text(n, "body"));
        let Some(id) = id else {
            return;
        };
        let id_loc = self.loc(id_node.map_or(fields.pos, |n| n.pos));
        // Duplicates across files.
        if let Some(other) = self.state.templates.get(&id) {
            let first = other.source.clone();
            self.push(
                Diagnostic::error(format!("template `{id}` is defined twice"))
                    .at(id_loc.clone())
                    .note(first, "first defined here")
                    .hint("each provider template gets one file in templates/"),
            );
            return;
        }
        if let Some(name) = &name {
            let clash = self
                .state
                .templates
                .values()
                .find(|t| &t.name == name)
                .map(|t| (t.id, t.source.clone()));
            if let Some((other_id, first)) = clash {
                let at = self.loc(name_node.map_or(fields.pos, |n| n.pos));
                self.push(
                    Diagnostic::error(format!(
                        "template `{id}`: name `{name}` is also template `{other_id}`'s name"
                    ))
                    .at(at)
                    .note(first, "first defined here")
                    .hint("rules may name templates by `name`, so names must be unique"),
                );
            }
        }
        let placeholders = body
            .as_deref()
            .map(crate::render::placeholders)
            .unwrap_or_default();
        if let (Some(node), Some(_)) = (body_node, &body) {
            let expected: Vec<usize> = (1..=placeholders.len()).collect();
            let found: Vec<usize> = placeholders.iter().copied().collect();
            if found != expected {
                let missing: Vec<String> = expected
                    .iter()
                    .filter(|n| !placeholders.contains(n))
                    .map(|n| format!("{{{n}}}"))
                    .collect();
                self.error(
                    node.pos,
                    format!(
                        "`body` placeholders must be numbered from `{{1}}` without gaps; missing {}",
                        missing.join(", ")
                    ),
                    "the provider counts placeholders: renumber them `{1}`, `{2}`, …",
                );
            }
        }
        let mut variables = Vec::new();
        if let Some(node) = vars_node {
            match node.as_seq() {
                Some(items) => {
                    for (i, item) in items.iter().enumerate() {
                        let key = format!("template/{id}/var/{}", i + 1);
                        if let Some(_key) = self.compile(&key, item, &format!("variables[{}]", i + 1)) {
                            variables.push(item.scalar_text().unwrap_or("").to_string());
                        }
                    }
                    if body.is_some() && items.len() != placeholders.len() {
                        self.error(
                            node.pos,
                            format!(
                                "`body` has {} placeholder{} but `variables` has {} entr{}",
                                placeholders.len(),
                                if placeholders.len() == 1 { "" } else { "s" },
                                items.len(),
                                if items.len() == 1 { "y" } else { "ies" }
                            ),
                            "give one Handlebars expression per placeholder, in order: the first fills `{1}`",
                        );
                    }
                }
                None => self.error(
                    node.pos,
                    format!("`variables` must be a list, found {}", node.describe()),
                    "one Handlebars expression per placeholder, e.g. `- \"{{appointment.paciente}}\"`",
                ),
            }
        }
        if self.has_new_errors() {
            self.state.broken_templates.push(id);
        }
        let (Some(name), Some(body)) = (name, body) else {
            return;
        };
        self.state.templates.insert(
            id,
            Template {
                id,
                name,
                placeholders: placeholders.len(),
                body,
                variables,
                source: id_loc,
            },
        );
    }

    // ---- rules -------------------------------------------------------------------------

    fn rules_file(&mut self, root: &Node) {
        let Some(fields) = self.fields(root, "file", &["rules"]) else {
            return;
        };
        let Some(list) = self.required(&fields, "rules", "file", "[…]") else {
            return;
        };
        if list.is_null() {
            return;
        }
        let Some(items) = list.as_seq() else {
            self.error(
                list.pos,
                format!(
                    "`rules` must be a list (each rule starts with `- name:`), found {}",
                    list.describe()
                ),
                "",
            );
            return;
        };
        for item in items {
            self.subject.clear();
            self.errors_before = self.state.diagnostics.len();
            self.rule(item);
        }
    }

    fn rule(&mut self, node: &Node) {
        // Name the rule in every message, even those about keys before `name:`.
        let early_name = node.as_map().and_then(|entries| {
            entries
                .iter()
                .find(|(k, _)| k.scalar_text() == Some("name"))
                .and_then(|(_, v)| v.scalar_text())
        });
        if let Some(name) = early_name {
            self.subject = format!("rule `{name}`");
        }
        let Some(fields) = self.fields(node, "rule", RULE_KEYS) else {
            return;
        };
        let name_node = self.required(&fields, "name", "rule", "recordatorio-dia-antes");
        let name = name_node.and_then(|n| self.text(n, "name"));
        if let (Some(name), Some(n)) = (&name, name_node) {
            self.subject = format!("rule `{name}`");
            let valid = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !valid {
                let fixed: String = name
                    .to_lowercase()
                    .chars()
                    .map(|c| match c {
                        'á' | 'à' | 'ä' => 'a',
                        'é' | 'è' | 'ë' => 'e',
                        'í' | 'ì' | 'ï' => 'i',
                        'ó' | 'ò' | 'ö' => 'o',
                        'ú' | 'ù' | 'ü' => 'u',
                        'ñ' => 'n',
                        c if c.is_ascii_alphanumeric() => c,
                        _ => '-',
                    })
                    .collect();
                self.error(
                    n.pos,
                    "the name may only hold lowercase letters a-z, digits and `-`",
                    format!("e.g. `{}`", fixed.trim_matches('-')),
                );
            }
        } else {
            self.subject = format!("rule at line {}", fields.pos.line);
        }
        let description = fields
            .get("description")
            .and_then(|n| self.text(n, "description"));
        let enabled = match fields.get("enabled") {
            Some(n) => self.bool(n, "enabled").unwrap_or(true),
            None => true,
        };
        let trigger_node = self.required(&fields, "trigger", "rule", "{cron: \"0 8 * * *\"}");
        let parsed = trigger_node.and_then(|n| self.trigger(n));
        let for_each = fields.get("for_each").and_then(|n| self.for_each(n));
        if let (Some(key), Some((trigger, _, _))) = (fields.key("for_each"), &parsed) {
            if !matches!(trigger, Trigger::Cron(_)) {
                self.error(
                    key.pos,
                    "`for_each` works with a `cron` trigger only",
                    "other triggers already concern one appointment; drop `for_each` or use `cron:`",
                );
            }
        }
        let conditions = fields
            .get("where")
            .map(|n| self.conditions(n))
            .unwrap_or_default();
        let rule_name = name.clone().unwrap_or_default();
        let actions = match self.required(&fields, "actions", "rule", "[{send: {template: 990}}]") {
            Some(n) => self.actions(n, &rule_name),
            None => Vec::new(),
        };
        let (Some(name), Some((trigger, timezone, refs))) = (name, parsed) else {
            return;
        };
        // Recorded even with errors elsewhere in it: duplicates and references are checked
        // against every name written.
        let name_loc = self.loc(name_node.map_or(fields.pos, |n| n.pos));
        let rule = Rule {
            name,
            description,
            enabled,
            trigger,
            for_each,
            conditions,
            actions,
            timezone,
            source: name_loc.clone(),
        };
        self.state.rules.push((
            rule,
            RuleRefs {
                name: name_loc,
                trigger: refs.0,
                reply_key: refs.1,
                rule_ref: refs.2,
            },
        ));
    }

    #[allow(clippy::type_complexity)]
    fn trigger(
        &mut self,
        node: &Node,
    ) -> Option<(
        Trigger,
        Tz,
        (
            Location,
            Option<Location>,
            Option<(String, Location, &'static str)>,
        ),
    )> {
        let fields = self.fields(node, "trigger", TRIGGER_KEYS)?;
        let kinds: Vec<(&str, &Node, &Node)> = fields
            .entries
            .iter()
            .filter(|(k, _, _)| TRIGGER_KINDS.contains(k))
            .copied()
            .collect();
        let timezone = match fields.get("timezone") {
            Some(n) => self.timezone(n),
            None => Some(self.state.config.timezone),
        };
        let trigger_loc = self.loc(node.pos);
        match kinds.as_slice() {
            [] => {
                self.error(
                    node.pos,
                    "the trigger says nothing about when to run",
                    format!("give exactly one of: {}", TRIGGER_KINDS.join(", ")),
                );
                return None;
            }
            [_, second, ..] => {
                let names: Vec<&str> = kinds.iter().map(|(k, _, _)| *k).collect();
                self.error(
                    second.1.pos,
                    format!(
                        "a rule has exactly one trigger, this one has {}",
                        names.join(" and ")
                    ),
                    "split it into two rules, one per trigger",
                );
                return None;
            }
            [_] => {}
        }
        let (kind, key, value) = kinds[0];
        // Modifiers that belong to other kinds.
        for (modifier, owners) in [
            ("catch_up", &["cron"][..]),
            ("late", &["before", "after"][..]),
            ("rule", &["status"][..]),
        ] {
            if let (Some(k), false) = (fields.key(modifier), owners.contains(&kind)) {
                self.error(
                    k.pos,
                    format!("`{modifier}` does not apply to a `{kind}` trigger"),
                    format!(
                        "`{modifier}` goes with {}",
                        owners
                            .iter()
                            .map(|o| format!("`{o}`"))
                            .collect::<Vec<_>>()
                            .join(" or ")
                    ),
                );
            }
        }
        let mut reply_key = None;
        let mut rule_ref = None;
        let trigger = match kind {
            "cron" => {
                let expression = self.text(value, "cron")?;
                let normalized = self.cron(value, &expression)?;
                let catch_up = match fields.get("catch_up") {
                    Some(n) => self.duration(n, "catch_up")?,
                    None => self.state.config.schedule.catch_up,
                };
                Trigger::Cron(CronTrigger {
                    expression,
                    parsed: parse_cron(&normalized).ok(),
                    normalized,
                    catch_up,
                })
            }
            "before" | "after" => {
                let offset = self.duration(value, kind)?;
                let late = match fields.get("late") {
                    Some(n) => match self.choice(n, "late", &["skip", "send"])?.as_str() {
                        "send" => LatePolicy::Send,
                        _ => LatePolicy::Skip,
                    },
                    None => LatePolicy::Skip,
                };
                Trigger::Offset(OffsetTrigger {
                    direction: if kind == "before" {
                        OffsetDirection::Before
                    } else {
                        OffsetDirection::After
                    },
                    offset,
                    late,
                })
            }
            "reply" => {
                reply_key = Some(self.loc(key.pos));
                Trigger::Reply(self.reply(value)?)
            }
            "status" => {
                let status = match self
                    .choice(value, "status", &["delivered", "read", "failed"])?
                    .as_str()
                {
                    "delivered" => EventKind::Delivered,
                    "read" => EventKind::Read,
                    _ => EventKind::Failed,
                };
                let rule = match fields.get("rule") {
                    Some(n) => {
                        let target = self.text(n, "rule")?;
                        rule_ref = Some((target.clone(), self.loc(n.pos), "rule"));
                        Some(target)
                    }
                    None => None,
                };
                Trigger::Status(StatusTrigger { status, rule })
            }
            "no_reply" => {
                let f = self.fields(value, "no_reply", &["after", "rule"])?;
                let after = self.required(&f, "after", "no_reply", "4h");
                let rule = self.required(&f, "rule", "no_reply", "recordatorio-dia-antes");
                let after = after.and_then(|n| self.duration(n, "no_reply.after"));
                let target = rule.and_then(|n| self.text(n, "no_reply.rule"));
                let (after, target, rule) = (after?, target?, rule?);
                rule_ref = Some((target.clone(), self.loc(rule.pos), "no_reply.rule"));
                Trigger::NoReply(NoReplyTrigger {
                    after,
                    rule: target,
                })
            }
            _ => {
                let change = match self
                    .choice(
                        value,
                        "appointment",
                        &["created", "rescheduled", "cancelled"],
                    )?
                    .as_str()
                {
                    "created" => AppointmentChange::Created,
                    "rescheduled" => AppointmentChange::Rescheduled,
                    _ => AppointmentChange::Cancelled,
                };
                Trigger::Appointment(change)
            }
        };
        Some((trigger, timezone?, (trigger_loc, reply_key, rule_ref)))
    }

    fn timezone(&mut self, node: &Node) -> Option<Tz> {
        let text = self.text(node, "timezone")?;
        match text.parse::<Tz>() {
            Ok(tz) => Some(tz),
            Err(_) => {
                let close = suggestion(&text, chrono_tz::TZ_VARIANTS.iter().map(|t| t.name()));
                let hint = if close.is_empty() {
                    "use an IANA name such as `America/Bogota`".to_string()
                } else {
                    close
                };
                self.error(node.pos, format!("unknown time zone `{text}`"), hint);
                None
            }
        }
    }

    /// Checks a cron expression the way tokio-cron-scheduler will run it; returns the
    /// seconds-first form.
    fn cron(&mut self, node: &Node, expression: &str) -> Option<String> {
        let fields: Vec<&str> = expression.split_whitespace().collect();
        let normalized = match fields.len() {
            5 => format!("0 {}", fields.join(" ")),
            6 => fields.join(" "),
            n => {
                self.error(
                    node.pos,
                    format!("cron `{expression}` has {n} fields"),
                    "write 5 fields `minute hour day-of-month month day-of-week` (e.g. `0 8 * * *`), or 6 with seconds first",
                );
                return None;
            }
        };
        if let Err(e) = parse_cron(&normalized) {
            self.error(
                node.pos,
                format!("cron `{expression}` is not valid: {e}"),
                "fields are `minute hour day-of-month month day-of-week`, e.g. `0 8 * * 1-5` is 8:00 on weekdays",
            );
            return None;
        }
        let normalized_fields: Vec<&str> = normalized.split(' ').collect();
        let restricted = |f: &str| f != "*" && f != "?";
        if restricted(normalized_fields[3]) && restricted(normalized_fields[5]) {
            self.warning(
                node.pos,
                format!(
                    "cron `{expression}` restricts both day-of-month and day-of-week: it fires only on days matching both"
                ),
                "unlike classic cron, the scheduler ANDs these two fields; use two rules for \"either\"",
            );
        }
        Some(normalized)
    }

    fn reply(&mut self, node: &Node) -> Option<ReplyTrigger> {
        if node.is_null() {
            return Some(ReplyTrigger {
                custom_field: None,
                custom_field_matcher: None,
                text: None,
                state: None,
            });
        }
        let f = self.fields(node, "reply", &["custom_field", "text", "state"])?;
        let mut ok = true;
        let mut trigger = ReplyTrigger {
            custom_field: None,
            custom_field_matcher: None,
            text: None,
            state: None,
        };
        if let Some(n) = f.get("custom_field") {
            match self.text(n, "reply.custom_field") {
                Some(pattern) => match globset::Glob::new(&pattern)
                    .and_then(|glob| globset::GlobSetBuilder::new().add(glob).build())
                {
                    Ok(set) => {
                        trigger.custom_field_matcher = Some(set);
                        trigger.custom_field = Some(pattern);
                    }
                    Err(e) => {
                        ok = false;
                        self.error(
                            n.pos,
                            format!("`reply.custom_field` is not a valid glob: {}", e.kind()),
                            "a glob such as `cita-*`: `*` matches anything, `?` one character",
                        );
                    }
                },
                None => ok = false,
            }
        }
        if let Some(n) = f.get("text") {
            match self.text(n, "reply.text") {
                Some(pattern) => match regex::RegexBuilder::new(&pattern)
                    .case_insensitive(true)
                    .size_limit(1 << 20)
                    .build()
                {
                    Ok(re) => trigger.text = Some(re),
                    Err(e) => {
                        ok = false;
                        let detail = e.to_string();
                        let last = detail.lines().last().unwrap_or("").trim();
                        let last = last.strip_prefix("error: ").unwrap_or(last).to_string();
                        self.error(
                            n.pos,
                            format!("`reply.text` is not a valid regex: {last}"),
                            "a regex on the trimmed reply, case-insensitive, e.g. `^(1|si|sí)\\b`; in double quotes write `\\\\b` for `\\b`",
                        );
                    }
                },
                None => ok = false,
            }
        }
        if let Some(n) = f.get("state") {
            match self.text(n, "reply.state") {
                Some(state) => trigger.state = Some(state),
                None => ok = false,
            }
        }
        ok.then_some(trigger)
    }

    fn for_each(&mut self, node: &Node) -> Option<ForEach> {
        let f = self.fields(node, "for_each", &["appointments"])?;
        let inner = self.required(&f, "appointments", "for_each", "{starts: tomorrow}")?;
        let f = self.fields(inner, "for_each.appointments", &["starts", "status"])?;
        let starts_node = self.required(&f, "starts", "for_each.appointments", "tomorrow")?;
        let starts = if starts_node.as_map().is_some() {
            let w = self.fields(starts_node, "starts", &["from", "to"])?;
            let from = self.required(&w, "from", "starts", "2h");
            let to = self.required(&w, "to", "starts", "3h");
            let from = from.and_then(|n| self.duration_or_zero(n, "starts.from"));
            let to = to.and_then(|n| self.duration(n, "starts.to"));
            let (from, to) = (from?, to?);
            if from >= to {
                self.error(
                    starts_node.pos,
                    "`starts.from` must be before `starts.to`",
                    "the window is `[fire time + from, fire time + to)`, e.g. `{from: 2h, to: 3h}`",
                );
                return None;
            }
            StartsSelector::Window { from, to }
        } else {
            match self
                .choice(starts_node, "starts", &["today", "tomorrow"])?
                .as_str()
            {
                "today" => StartsSelector::Today,
                _ => StartsSelector::Tomorrow,
            }
        };
        let status = match f.get("status") {
            Some(n) => self.statuses(n, "for_each.appointments.status")?,
            None => Vec::new(),
        };
        Some(ForEach { starts, status })
    }

    fn duration_or_zero(&mut self, node: &Node, what: &str) -> Option<Duration> {
        if node.scalar_text().map(str::trim) == Some("0") {
            return Some(Duration::ZERO);
        }
        self.duration(node, what)
    }

    /// One status or a list of them, each a known appointment status.
    fn statuses(&mut self, node: &Node, what: &str) -> Option<Vec<String>> {
        let items: Vec<&Node> = match node.as_seq() {
            Some(items) => items.iter().collect(),
            None => vec![node],
        };
        let mut out = Vec::new();
        let mut ok = true;
        for item in items {
            match self.choice(item, what, APPOINTMENT_STATUSES) {
                Some(s) => out.push(s),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn conditions(&mut self, node: &Node) -> Vec<Condition> {
        let Some(fields) = self.fields(node, "where", &[]) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (path, key, value) in fields.entries {
            let root = path.split('.').next().unwrap_or("");
            if !CONTEXT_ROOTS.contains(&root) {
                let close = did_you_mean(root, CONTEXT_ROOTS.iter().copied())
                    .map(|c| format!("did you mean `{}`?", path.replacen(root, c, 1)))
                    .unwrap_or_else(|| {
                        format!("paths start with one of: {}", CONTEXT_ROOTS.join(", "))
                    });
                self.error(
                    key.pos,
                    format!("`where` path `{path}` names nothing in the context"),
                    close,
                );
                continue;
            }
            let items: Vec<&Node> = match &value.kind {
                NodeKind::Seq(items) => items.iter().collect(),
                NodeKind::Map(_) => {
                    self.error(
                        value.pos,
                        format!("`where.{path}` must be a value or a list of values, found a map"),
                        "e.g. `appointment.status: [scheduled, confirmed]`",
                    );
                    continue;
                }
                NodeKind::Scalar { .. } => vec![value],
            };
            let mut values = Vec::new();
            for item in items {
                match item.to_json_scalar() {
                    Some(v) => {
                        if path == "appointment.status" {
                            if let Some(s) = v.as_str() {
                                if !APPOINTMENT_STATUSES.contains(&s) {
                                    self.error(
                                        item.pos,
                                        format!("`{s}` is not an appointment status"),
                                        format!(
                                            "{}statuses: {}",
                                            did_you_mean(s, APPOINTMENT_STATUSES.iter().copied())
                                                .map(|c| format!("did you mean `{c}`? "))
                                                .unwrap_or_default(),
                                            APPOINTMENT_STATUSES.join(", ")
                                        ),
                                    );
                                }
                            }
                        }
                        values.push(v);
                    }
                    None => self.error(
                        item.pos,
                        format!(
                            "`where.{path}` values must be plain values, found {}",
                            item.describe()
                        ),
                        "",
                    ),
                }
            }
            out.push(Condition {
                path: path.to_string(),
                values,
            });
        }
        out
    }

    fn actions(&mut self, node: &Node, rule: &str) -> Vec<Action> {
        let Some(items) = node.as_seq() else {
            self.error(
                node.pos,
                format!("`actions` must be a list, found {}", node.describe()),
                "start each action with `- `, e.g. `- send: {template: 990}`",
            );
            return Vec::new();
        };
        if items.is_empty() {
            self.error(
                node.pos,
                "`actions` is empty: the rule would do nothing",
                "add at least one action",
            );
        }
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let Some(entries) = item.as_map() else {
                self.error(
                    item.pos,
                    format!("an action must be `kind: …`, found {}", item.describe()),
                    format!("actions: {}", ACTION_KINDS.join(", ")),
                );
                continue;
            };
            let Some(f) = self.fields(item, "action", ACTION_KINDS) else {
                continue;
            };
            if entries.len() > 1 && f.entries.len() > 1 {
                self.error(
                    f.entries[1].1.pos,
                    format!(
                        "one list item holds two actions (`{}` and `{}`)",
                        f.entries[0].0, f.entries[1].0
                    ),
                    format!(
                        "start each action with its own `- `: `- {}: …`",
                        f.entries[1].0
                    ),
                );
                continue;
            }
            let Some(&(kind, _, value)) = f.entries.first() else {
                continue;
            };
            let prefix = format!("rule/{rule}/action/{}", i + 1);
            let action = match kind {
                "send" => self.send(value, &prefix).map(Action::Send),
                "set_state" => self.text(value, "set_state").map(Action::SetState),
                "update_appointment" => self.update_appointment(value),
                _ => self.notify(value, &prefix).map(Action::Notify),
            };
            out.extend(action);
        }
        out
    }

    fn send(&mut self, node: &Node, prefix: &str) -> Option<SendAction> {
        let f = self.fields(node, "send", SEND_KEYS)?;
        let template_node = self.required(&f, "template", "send", "990")?;
        let template = self.template_ref(template_node);
        let to = f
            .get("to")
            .and_then(|n| self.compile(&format!("{prefix}/to"), n, "send.to"));
        let media = f.get("media").and_then(|n| {
            let key = self.compile(&format!("{prefix}/media"), n, "send.media")?;
            self.check_media(n);
            Some(key)
        });
        let custom_field = f.get("custom_field").and_then(|n| {
            let key = self.compile(&format!("{prefix}/custom_field"), n, "send.custom_field")?;
            if n.scalar_text().map_or(0, |t| t.chars().count()) > 1000 {
                self.error(
                    n.pos,
                    "`send.custom_field` is over the provider's 1000 characters",
                    "",
                );
            }
            Some(key)
        });
        let template = template?;
        let (id, placeholders, defaults) = (
            template.id,
            template.placeholders,
            template.variables.clone(),
        );
        let broken = self.state.broken_templates.contains(&id);
        let mut variables: Vec<Option<String>> = vec![None; placeholders];
        let mut complete = true;
        match f.get("variables") {
            None => {}
            Some(n) => match &n.kind {
                NodeKind::Seq(items) => {
                    if items.len() != placeholders {
                        self.error(
                            n.pos,
                            format!(
                                "template `{id}` has {placeholders} placeholders but the rule gives {} variables",
                                items.len()
                            ),
                            format!("give exactly {placeholders}, in order (the first fills `{{1}}`), or a map such as `{{2: \"…\"}}` to override only some of the template's defaults"),
                        );
                        complete = false;
                    }
                    for (i, item) in items.iter().enumerate().take(placeholders) {
                        let key = format!("{prefix}/var/{}", i + 1);
                        variables[i] =
                            self.compile(&key, item, &format!("send.variables[{}]", i + 1));
                        complete &= variables[i].is_some();
                    }
                }
                NodeKind::Map(entries) => {
                    for (k, v) in entries {
                        let number = k.scalar_text().and_then(|t| t.parse::<usize>().ok());
                        match number {
                            Some(n) if (1..=placeholders).contains(&n) => {
                                let key = format!("{prefix}/var/{n}");
                                variables[n - 1] =
                                    self.compile(&key, v, &format!("send.variables.{n}"));
                                complete &= variables[n - 1].is_some();
                            }
                            _ => {
                                self.error(
                                    k.pos,
                                    format!(
                                        "`send.variables` key `{}` is not a placeholder of template `{id}` (1 to {placeholders})",
                                        k.scalar_text().unwrap_or("?")
                                    ),
                                    "a map overrides single placeholders by number: `{2: \"{{appointment.sede}}\"}`",
                                );
                                complete = false;
                            }
                        }
                    }
                }
                NodeKind::Scalar { .. } => {
                    self.error(
                        n.pos,
                        format!("`send.variables` must be a list or a map, found {}", n.describe()),
                        "a list overrides every variable; a map such as `{2: \"…\"}` only those it names",
                    );
                    complete = false;
                }
            },
        }
        if broken {
            return None;
        }
        // Defaults from the template file, compiled for this use.
        for (i, slot) in variables.iter_mut().enumerate() {
            if slot.is_none() && complete {
                let key = format!("{prefix}/var/{}", i + 1);
                let source = defaults.get(i).cloned().unwrap_or_default();
                match self.state.renderer.register(&key, &source) {
                    Ok(()) => *slot = Some(key),
                    Err(_) => complete = false,
                }
            }
        }
        if !complete {
            return None;
        }
        Some(SendAction {
            template_id: id,
            to,
            variables: variables.into_iter().flatten().collect(),
            media,
            custom_field,
        })
    }

    fn template_ref(&mut self, node: &Node) -> Option<Template> {
        let text = self.text(node, "send.template")?;
        let found = match text.parse::<u32>() {
            Ok(id) => self.state.templates.get(&id),
            Err(_) => self.state.templates.values().find(|t| t.name == text),
        };
        if let Some(t) = found {
            return Some(t.clone());
        }
        let known: Vec<String> = self
            .state
            .templates
            .values()
            .map(|t| format!("{} ({})", t.id, t.name))
            .collect();
        let close = did_you_mean(
            &text,
            self.state.templates.values().map(|t| t.name.as_str()),
        )
        .map(|c| format!("did you mean `{c}`? "))
        .unwrap_or_default();
        let hint = if known.is_empty() {
            "templates/ holds no templates: add `templates/<id>-<name>.yaml`".to_string()
        } else {
            format!(
                "{close}templates/ holds: {}; add a file for it or fix the id",
                known.join(", ")
            )
        };
        self.error(
            node.pos,
            format!("template `{text}` is not in templates/"),
            hint,
        );
        None
    }

    fn check_media(&mut self, node: &Node) {
        let Some(url) = node.scalar_text() else {
            return;
        };
        if url.contains("{{") {
            return; // checked when rendered, at send time
        }
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            self.error(
                node.pos,
                format!("`send.media` `{url}` is not a public URL"),
                "the provider fetches it: use `https://…`",
            );
            return;
        }
        let path = url.split(['?', '#']).next().unwrap_or(url);
        let ext = path
            .rsplit_once('.')
            .map(|(_, e)| e.to_lowercase())
            .unwrap_or_default();
        if !MEDIA_KINDS.contains(&ext.as_str()) {
            self.error(
                node.pos,
                format!("`send.media` is a `.{ext}` file, which the provider refuses"),
                format!("allowed: {}", MEDIA_KINDS.join(", ")),
            );
        }
    }

    fn update_appointment(&mut self, node: &Node) -> Option<Action> {
        let f = self.fields(node, "update_appointment", &[])?;
        let mut map = serde_json::Map::new();
        let mut ok = true;
        for (key, k, v) in &f.entries {
            if *key == "id" {
                self.error(
                    k.pos,
                    "`update_appointment` cannot change the appointment's `id`",
                    "",
                );
                ok = false;
                continue;
            }
            if *key == "status" {
                match self.choice(v, "update_appointment.status", APPOINTMENT_STATUSES) {
                    Some(s) => {
                        map.insert("status".into(), s.into());
                    }
                    None => ok = false,
                }
                continue;
            }
            match v.to_json_scalar() {
                Some(value) => {
                    map.insert(key.to_string(), value);
                }
                None => {
                    self.error(
                        v.pos,
                        format!(
                            "`update_appointment.{key}` must be a plain value, found {}",
                            v.describe()
                        ),
                        "",
                    );
                    ok = false;
                }
            }
        }
        if map.is_empty() && ok {
            self.error(
                node.pos,
                "`update_appointment` sets nothing",
                "e.g. `update_appointment: {status: confirmed}`",
            );
            return None;
        }
        ok.then_some(Action::UpdateAppointment(map))
    }

    fn notify(&mut self, node: &Node, prefix: &str) -> Option<NotifyAction> {
        let (endpoint_node, message) = if node.as_map().is_some() {
            let f = self.fields(node, "notify", &["endpoint", "message"])?;
            let endpoint = self.required(&f, "endpoint", "notify", "recepcion")?;
            let message = match f.get("message") {
                Some(n) => Some(self.compile(&format!("{prefix}/message"), n, "notify.message")?),
                None => None,
            };
            (endpoint, message)
        } else {
            (node, None)
        };
        let endpoint = self.text(endpoint_node, "notify")?;
        if !self.state.config.notify.contains_key(&endpoint) {
            let names: Vec<&str> = self
                .state
                .config
                .notify
                .keys()
                .map(String::as_str)
                .collect();
            let hint = match did_you_mean(&endpoint, names.iter().copied()) {
                Some(close) => format!("did you mean `{close}`?"),
                None => format!(
                    "add it to recuerda.yaml: `notify: {{{endpoint}: {{url: https://…}}}}`{}",
                    if names.is_empty() {
                        String::new()
                    } else {
                        format!(" (configured: {})", names.join(", "))
                    }
                ),
            };
            self.error(
                endpoint_node.pos,
                format!("notify endpoint `{endpoint}` is not in the config"),
                hint,
            );
            return None;
        }
        Some(NotifyAction { endpoint, message })
    }
}

/// Parses a seconds-first cron expression exactly as tokio-cron-scheduler does.
pub fn parse_cron(normalized: &str) -> Result<croner::Cron, croner::errors::CronError> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(normalized)
}
