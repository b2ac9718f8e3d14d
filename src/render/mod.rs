//! Handlebars rendering of WhatsApp text, with the helpers a Colombian clinic needs, and the
//! provider side of a template: its `{n}` placeholders and the checks on each variable.
//!
//! Templates are strict (a missing value is an error naming its path, never an empty string),
//! unescaped (WhatsApp text, not HTML) and compiled once, at [`Renderer::register`], which also
//! refuses helpers that do not exist so that a typo fails at `recuerda check`, not at 8:00.
//!
//! Helpers, in the context's `rule.timezone` (default `America/Bogota`):
//! `fecha` (`jueves 26 de noviembre`), `fecha_corta` (`26/11/2026`), `hora` (`3:30 p. m.`),
//! `primer_nombre`, `mayusculas`, `minusculas`, `capitalizar`, `pesos` (`$1.250.000`),
//! `default` and `eq`; plus Handlebars' `if`, `unless`, `each`, `with` and `lookup`.
//!
//! Strict mode and helpers: Handlebars hands a helper a missing path as "missing" instead of
//! failing, so each helper decides. `default` turns a missing, `null` or blank value into its
//! fallback; `eq` compares a missing value as `null` (as `#if` treats it as false); every other
//! helper fails with the same "`path` is missing" error as a bare `{{path}}`.

mod helpers;

use std::collections::{BTreeSet, HashMap};

use handlebars::template::{HelperTemplate, Parameter, Template, TemplateElement, TemplateMapping};
/// A rendering context made once from a JSON value, for several [`Renderer::render_in`] calls.
pub use handlebars::Context;
use handlebars::{Handlebars, Path, RenderErrorReason, TemplateErrorReason};

use helpers::ClinicHelper;
pub use helpers::DEFAULT_TIMEZONE;

/// Names of the helpers a template may call: ours, then the Handlebars built-ins we keep.
pub const HELPERS: &[&str] = &[
    "fecha",
    "fecha_corta",
    "hora",
    "primer_nombre",
    "mayusculas",
    "minusculas",
    "capitalizar",
    "pesos",
    "default",
    "eq",
    "if",
    "unless",
    "each",
    "with",
    "lookup",
];

/// Handlebars built-ins that are block-only, each taking one value.
const BLOCK_BUILTINS: &[&str] = &["if", "unless", "each", "with"];

/// Built-ins that `Handlebars::new()` registers but recuerda does not offer: fewer names to
/// document, and `{{eq}}` must be ours.
const DROPPED_BUILTINS: &[&str] = &[
    "raw", "log", "ne", "gt", "gte", "lt", "lte", "and", "or", "not", "len",
];

/// A template that cannot be compiled: bad syntax, an unknown helper, a helper called wrongly.
/// `line` and `column` are 1-based, inside the template's own source, when known.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct TemplateSyntaxError {
    pub message: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
}

/// A template that compiled but could not be rendered over a given context.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct RenderError {
    pub message: String,
}

/// Compiled templates and the helpers they may call. Cheap to share (`Send + Sync`).
#[derive(Debug, Clone)]
pub struct Renderer {
    registry: Handlebars<'static>,
    /// Sources by key: a multi-line template's render error points at its line.
    sources: HashMap<String, String>,
}

impl Default for Renderer {
    fn default() -> Self {
        Renderer::new()
    }
}

impl Renderer {
    pub fn new() -> Renderer {
        let mut registry = Handlebars::new();
        registry.set_strict_mode(true);
        registry.register_escape_fn(handlebars::no_escape);
        for name in DROPPED_BUILTINS {
            registry.unregister_helper(name);
        }
        for helper in ClinicHelper::ALL {
            registry.register_helper(helper.name(), Box::new(helper));
        }
        Renderer {
            registry,
            sources: HashMap::new(),
        }
    }

    /// Compiles `source` and registers it under `key` (replacing any template of that key).
    /// Unknown helpers, helpers given the wrong number of values, partials, decorators and
    /// syntax errors are refused, with the 1-based line/column inside `source` when known.
    pub fn register(&mut self, key: &str, source: &str) -> Result<(), TemplateSyntaxError> {
        let template = compile(source)?;
        self.registry.register_template(key, template);
        self.sources.insert(key.to_owned(), source.to_owned());
        Ok(())
    }

    /// Renders `key` over `ctx` (JSON). A missing value is an error naming the path.
    pub fn render(&self, key: &str, ctx: &serde_json::Value) -> Result<String, RenderError> {
        self.render_in(key, &Context::from(ctx.clone()))
    }

    /// Renders `key` over a context made once with [`Context::from`] a JSON value: rendering
    /// a send's variables, `to`, `media` and `custom_field` over one context copies it once,
    /// where [`Renderer::render`] (and handlebars' own `render`) copies it for each.
    pub fn render_in(&self, key: &str, ctx: &Context) -> Result<String, RenderError> {
        let Some(source) = self.sources.get(key) else {
            return Err(RenderError {
                message: format!(
                    "template `{key}` is not registered: register it before rendering"
                ),
            });
        };
        self.registry
            .render_with_context(key, ctx)
            .map_err(|e| render_error(&e, source))
    }

    /// Whether the template under `key` may read `root` of its context: it names it, or it
    /// can reach the whole context (`this`, `@root`, `lookup`, `../`). An unknown key may.
    /// Lets a caller skip building a part of the context no template uses.
    pub fn may_read(&self, key: &str, root: &str) -> bool {
        self.sources.get(key).is_none_or(|source| {
            source.contains(root)
                || ["this", "@root", "lookup", "../"]
                    .iter()
                    .any(|whole| source.contains(whole))
        })
    }

    /// Whether a template is registered under `key`.
    pub fn contains(&self, key: &str) -> bool {
        self.sources.contains_key(key)
    }
}

/// Compiles and checks one template source without registering it.
pub fn compile(source: &str) -> Result<Template, TemplateSyntaxError> {
    let template = Template::compile(source).map_err(|e| syntax_error(&e))?;
    let mut problems = Vec::new();
    check_template(&template, source, &mut problems);
    // Report the first problem in reading order: the one the user meets first.
    match problems.into_iter().min_by_key(|p| (p.line, p.column)) {
        Some(problem) => Err(problem),
        None => Ok(template),
    }
}

fn syntax_error(e: &handlebars::TemplateError) -> TemplateSyntaxError {
    let message = match e.reason() {
        TemplateErrorReason::MismatchingClosedHelper(open, close)
        | TemplateErrorReason::MismatchingClosedDecorator(open, close) => {
            format!("`{{{{#{open}}}}}` is closed by `{{{{/{close}}}}}`: close it with `{{{{/{open}}}}}`")
        }
        TemplateErrorReason::InvalidSyntax(expected) => invalid_syntax(expected).to_owned(),
        TemplateErrorReason::InvalidParam(param) => {
            format!("invalid template syntax: `{param}` is not a value or a path")
        }
        TemplateErrorReason::NestedSubexpression => {
            "invalid template syntax: a `( … )` cannot hold another one here".to_owned()
        }
        other => format!("invalid template: {other}"),
    };
    let (line, column) = e.pos().unzip();
    TemplateSyntaxError {
        message,
        line,
        column,
    }
}

/// Says in the user's words what pest's grammar-rule names mean.
fn invalid_syntax(expected: &str) -> &'static str {
    if expected.contains("helper_block_end") {
        "invalid template syntax: a `{{#…}}` block is not closed: add its `{{/…}}`"
    } else if expected.contains("unexpected invert_tag") {
        "invalid template syntax: a block has more than one `{{else}}`"
    } else if expected.contains("trailing_tilde_to_omit_whitespace") {
        "invalid template syntax: expected `}}` here: close the `{{`, close the quote, \
         and note that a helper's name cannot be a path like `a.b`"
    } else if expected.contains("path_inline") {
        "invalid template syntax: expected a name or a value after `{{`"
    } else if expected.contains("helper_parameter") {
        "invalid template syntax: expected a value here"
    } else {
        "invalid template syntax: check the `{{` and `}}` pairs"
    }
}

fn render_error(e: &handlebars::RenderError, source: &str) -> RenderError {
    let message = match e.reason() {
        RenderErrorReason::MissingVariable(Some(path)) => {
            format!(
                "`{path}` is missing: add it to the data, or write {{{{default {path} \"…\"}}}}"
            )
        }
        RenderErrorReason::MissingVariable(None) => "a value is missing".to_owned(),
        RenderErrorReason::Other(message) => message.clone(),
        RenderErrorReason::HelperNotFound(name) => format!("unknown helper `{name}`"),
        other => other.to_string(),
    };
    let message = match (e.line_no, e.column_no) {
        (Some(line), Some(column)) if source.contains('\n') => {
            format!("{message} (line {line}, column {column})")
        }
        _ => message,
    };
    RenderError { message }
}

/// Where a problem is in the source; `None` when not found.
type Position = Option<(usize, usize)>;

fn problem(message: String, position: Position) -> TemplateSyntaxError {
    let (line, column) = position.unzip();
    TemplateSyntaxError {
        message,
        line,
        column,
    }
}

fn check_template(template: &Template, source: &str, problems: &mut Vec<TemplateSyntaxError>) {
    for (index, element) in template.elements.iter().enumerate() {
        let start = template
            .mapping
            .get(index)
            .map(|mapping: &TemplateMapping| (mapping.0, mapping.1));
        check_element(element, start, source, problems);
    }
}

fn check_element(
    element: &TemplateElement,
    start: Position,
    source: &str,
    problems: &mut Vec<TemplateSyntaxError>,
) {
    match element {
        TemplateElement::Expression(ht) | TemplateElement::HtmlExpression(ht) => {
            // `{{appointment.sede}}`: a value, unless the name is a helper's.
            let value = ht.params.is_empty()
                && ht.hash.is_empty()
                && name_of(&ht.name).is_some_and(|name| !HELPERS.contains(&name.as_str()));
            if !value {
                check_helper(ht, Call::Inline, start, source, problems);
            }
        }
        TemplateElement::HelperBlock(ht) => {
            check_helper(ht, Call::Block, start, source, problems);
            for inner in [&ht.template, &ht.inverse].into_iter().flatten() {
                check_template(inner, source, problems);
            }
        }
        TemplateElement::PartialExpression(_) | TemplateElement::PartialBlock(_) => {
            problems.push(problem(
                "partials (`{{> …}}`) are not supported: write the text in the template".to_owned(),
                start,
            ));
        }
        TemplateElement::DecoratorExpression(_) | TemplateElement::DecoratorBlock(_) => {
            problems.push(problem(
                "decorators (`{{* …}}`) are not supported in recuerda templates".to_owned(),
                start,
            ));
        }
        _ => {}
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    /// `{{name …}}` or `(name …)`.
    Inline,
    /// `{{#name …}}…{{/name}}`.
    Block,
}

/// Checks a helper call and the subexpressions among its values.
fn check_helper(
    ht: &HelperTemplate,
    call: Call,
    start: Position,
    source: &str,
    problems: &mut Vec<TemplateSyntaxError>,
) {
    check_call(
        name_of(&ht.name),
        ht.params.len(),
        !ht.hash.is_empty(),
        call,
        start,
        source,
        problems,
    );
    check_params(&ht.params, ht.hash.values(), start, source, problems);
}

fn check_params<'a>(
    params: &'a [Parameter],
    hash: impl Iterator<Item = &'a Parameter>,
    start: Position,
    source: &str,
    problems: &mut Vec<TemplateSyntaxError>,
) {
    for param in params.iter().chain(hash) {
        if let Parameter::Subexpression(sub) = param {
            if let TemplateElement::Expression(ht) = sub.as_element() {
                // A subexpression always calls a helper, even with no values.
                check_helper(ht, Call::Inline, start, source, problems);
            }
        }
    }
}

/// A helper's name as written; `None` for a computed name (`{{(x) y}}`).
fn name_of(param: &Parameter) -> Option<String> {
    match param {
        Parameter::Name(name) => Some(name.clone()),
        Parameter::Path(Path::Relative((_, raw))) | Parameter::Path(Path::Local((_, _, raw))) => {
            Some(raw.clone())
        }
        _ => None,
    }
}

fn check_call(
    name: Option<String>,
    n_params: usize,
    has_hash: bool,
    call: Call,
    start: Position,
    source: &str,
    problems: &mut Vec<TemplateSyntaxError>,
) {
    let Some(name) = name else {
        problems.push(problem(
            "a helper's name must be written out, not computed".to_owned(),
            start,
        ));
        return;
    };
    let at = locate_name(source, &name, start).or(start);
    let ours = ClinicHelper::ALL.into_iter().find(|h| h.name() == name);
    let message = if let Some(helper) = ours {
        if call == Call::Block {
            Some(match helper {
                ClinicHelper::Eq => {
                    "`eq` is not a block: write {{#if (eq appointment.sede \"norte\")}}…{{/if}}"
                        .to_owned()
                }
                _ => format!("`{name}` is not a block: write {}", helper.example()),
            })
        } else if has_hash {
            Some(format!(
                "`{name}` takes no `key=value` options: write {}",
                helper.example()
            ))
        } else if n_params != helper.arity() {
            Some(format!(
                "`{name}` takes {} value{}, got {n_params}: write {}",
                helper.arity(),
                if helper.arity() == 1 { "" } else { "s" },
                helper.example()
            ))
        } else {
            None
        }
    } else if BLOCK_BUILTINS.contains(&name.as_str()) {
        if call == Call::Inline {
            Some(format!(
                "`{name}` is a block: write {{{{#{name} …}}}}…{{{{/{name}}}}}"
            ))
        } else if n_params != 1 {
            Some(format!("`#{name}` takes 1 value, got {n_params}: write {{{{#{name} appointment.x}}}}…{{{{/{name}}}}}"))
        } else {
            None
        }
    } else if name == "lookup" {
        (call == Call::Block || n_params != 2)
            .then(|| "`lookup` takes 2 values: write {{lookup object key}}".to_owned())
    } else {
        Some(match did_you_mean(&name) {
            Some(close) => format!("unknown helper `{name}`: did you mean `{close}`?"),
            None => format!(
                "unknown helper `{name}`: the helpers are {}",
                HELPERS.join(", ")
            ),
        })
    };
    if let Some(message) = message {
        problems.push(problem(message, at));
    }
}

/// The closest helper name, when it is close enough to be a typo.
fn did_you_mean(name: &str) -> Option<&'static str> {
    let lower = name.to_lowercase();
    HELPERS
        .iter()
        .map(|&candidate| (edit_distance(&lower, candidate), candidate))
        .filter(|&(distance, candidate)| {
            distance <= 2.max(candidate.len() / 3) && distance < lower.chars().count()
        })
        .min_by_key(|&(distance, _)| distance)
        .map(|(_, candidate)| candidate)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != cb))
                .min(row[j] + 1)
                .min(above + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

/// The 1-based line/column of `name` written as a helper name (after `{{`, `{{#`, `{{~`, `(`,
/// `{{else `…), searching from `start` (the element's `{{`) or else from the top.
fn locate_name(source: &str, name: &str, start: Position) -> Position {
    let from = start
        .and_then(|(line, column)| offset_of(source, line, column))
        .unwrap_or(0);
    let found = find_call(source, name, from).or_else(|| find_call(source, name, 0))?;
    Some(line_column(source, found))
}

fn find_call(source: &str, name: &str, from: usize) -> Option<usize> {
    let haystack = source.get(from..)?;
    haystack
        .match_indices(name)
        .map(|(i, _)| from + i)
        .find(|&at| {
            let before = source[..at].trim_end_matches([' ', '\t', '\n', '\r', '~', '#', '^']);
            let after = source[at + name.len()..].chars().next();
            let ends_word =
                !after.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.' || c == '-');
            ends_word
                && (before.ends_with("{{") || before.ends_with('(') || before.ends_with("{{else"))
        })
}

/// Byte offset of a 1-based line/column (column counted in characters).
fn offset_of(source: &str, line: usize, column: usize) -> Option<usize> {
    let line_start = if line <= 1 {
        0
    } else {
        source.match_indices('\n').nth(line - 2)?.0 + 1
    };
    let rest = &source[line_start..];
    let within = rest
        .char_indices()
        .nth(column.saturating_sub(1))
        .map_or(rest.len(), |(i, _)| i);
    Some(line_start + within)
}

fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Distinct `{n}` placeholders (n ≥ 1) in a provider template body, e.g. {1,2,3}. Other braces
/// (`{}`, `{0}`, `{nombre}`, `{{x}}`'s inner `{x}`…) are text.
pub fn placeholders(body: &str) -> BTreeSet<usize> {
    scan_placeholders(body).map(|(_, _, n)| n).collect()
}

/// The body with each `{n}` replaced by `vars[n-1]`, in one pass (a variable that itself holds
/// `{2}` stays as is): the exact text the patient reads. A `{n}` with no variable stays as is.
pub fn place_variables(body: &str, vars: &[String]) -> String {
    let mut out = String::with_capacity(body.len() + vars.iter().map(String::len).sum::<usize>());
    let mut copied = 0;
    for (start, end, n) in scan_placeholders(body) {
        if let Some(value) = vars.get(n - 1) {
            out.push_str(&body[copied..start]);
            out.push_str(value);
            copied = end;
        }
    }
    out.push_str(&body[copied..]);
    out
}

/// `(start, end, n)` of each `{n}`: `{`, a number without leading zero, `}`.
fn scan_placeholders(body: &str) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
    body.match_indices('{').filter_map(move |(start, _)| {
        let rest = &body[start + 1..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let number = &rest[..digits];
        if digits == 0 || number.starts_with('0') || !rest[digits..].starts_with('}') {
            return None;
        }
        let n = number.parse::<usize>().ok()?;
        Some((start, start + 1 + digits + 1, n))
    })
}

/// Checks one rendered variable for the provider: non-empty after trim, no `[` or `]` (the
/// provider wraps each variable in brackets, so a bracket inside would cut it short).
pub fn check_variable(value: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err(
            "the value is empty: the provider refuses empty variables; use {{default … \"…\"}}"
                .to_owned(),
        );
    }
    if let Some(bracket) = value.chars().find(|&c| c == '[' || c == ']') {
        return Err(format!(
            "`{value}` holds `{bracket}`: the provider wraps variables in brackets, so they cannot contain `[` or `]`"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers_list_matches_what_is_registered() {
        let renderer = Renderer::new();
        let not_found = |name: &str| {
            let source = format!("{{{{#if ({name} 1 2)}}}}x{{{{/if}}}}");
            matches!(
                renderer.registry.render_template(&source, &serde_json::json!({})),
                Err(e) if matches!(e.reason(), RenderErrorReason::HelperNotFound(_))
            )
        };
        for name in HELPERS {
            assert!(!not_found(name), "`{name}` should be registered");
        }
        for name in DROPPED_BUILTINS {
            assert!(not_found(name), "`{name}` should not be registered");
        }
    }

    #[test]
    fn a_template_may_read_what_it_names_or_the_whole_context() {
        let mut r = Renderer::new();
        let sources = [
            ("name", "{{primer_nombre appointment.paciente}}", false),
            ("state", "{{default conversation.state \"-\"}}", true),
            ("each", "{{#each this}}{{@key}}{{/each}}", true),
            (
                "root",
                "{{#with appointment}}{{@root.reply.message}}{{/with}}",
                true,
            ),
            ("up", "{{#with appointment}}{{../now}}{{/with}}", true),
        ];
        for (key, source, _) in sources {
            r.register(key, source).unwrap();
        }
        for (key, source, reads) in sources {
            assert_eq!(r.may_read(key, "conversation"), reads, "{source}");
        }
        assert!(r.may_read("not-registered", "conversation"));
    }

    #[test]
    fn did_you_mean_suggests_close_names() {
        assert_eq!(did_you_mean("fechas"), Some("fecha"));
        assert_eq!(did_you_mean("Mayusculas"), Some("mayusculas"));
        assert_eq!(did_you_mean("primer_nom"), Some("primer_nombre"));
        assert_eq!(did_you_mean("zzzzzzzz"), None);
    }

    #[test]
    fn positions_round_trip() {
        let source = "uno\nañá {{x}}\ntres";
        let at = offset_of(source, 2, 5).unwrap();
        assert_eq!(&source[at..at + 2], "{{");
        assert_eq!(line_column(source, at), (2, 5));
    }

    #[test]
    fn renderer_is_shareable() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Renderer>();
    }
}
