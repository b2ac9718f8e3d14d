//! Handlebars rendering of WhatsApp text, with the helpers a Colombian clinic needs.
//!
//! STAND-IN: this file only keeps the `rules` work compiling and testable until the real renderer
//! (another branch) is merged over it. Its API is exactly the agreed one; its Spanish helpers are
//! identity placeholders, not the real formatting.

use handlebars::template::{Parameter, TemplateElement};
use handlebars::{Handlebars, Template};
use std::collections::BTreeSet;

/// Helpers the real renderer provides (names fixed by PRODUCT.md).
const CLINIC_HELPERS: &[&str] = &[
    "fecha",
    "fecha_corta",
    "hora",
    "primer_nombre",
    "mayusculas",
    "minusculas",
    "capitalizar",
    "pesos",
    "default",
];

/// Helpers handlebars itself registers.
const BUILTIN_HELPERS: &[&str] = &[
    "if", "unless", "each", "with", "lookup", "raw", "log", "eq", "ne", "gt", "gte", "lt", "lte",
    "and", "or", "not", "len",
];

pub struct Renderer {
    registry: Handlebars<'static>,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct TemplateSyntaxError {
    pub message: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct RenderError {
    pub message: String,
}

impl Default for Renderer {
    fn default() -> Self {
        Self::new()
    }
}

impl Renderer {
    pub fn new() -> Renderer {
        let mut registry = Handlebars::new();
        registry.set_strict_mode(true);
        registry.register_escape_fn(handlebars::no_escape);
        for name in CLINIC_HELPERS {
            registry.register_helper(name, Box::new(identity_helper));
        }
        Renderer { registry }
    }

    /// Compiles `source` and registers it under `key`. Unknown helpers and syntax errors are
    /// refused, with the 1-based line/column inside `source` when known.
    pub fn register(&mut self, key: &str, source: &str) -> Result<(), TemplateSyntaxError> {
        let template = Template::compile(source).map_err(|e| {
            let (line, column) = e.pos().map_or((None, None), |(l, c)| (Some(l), Some(c)));
            TemplateSyntaxError {
                message: format!("{}", e.reason()),
                line,
                column,
            }
        })?;
        check_helpers(&template)?;
        self.registry.register_template(key, template);
        Ok(())
    }

    /// Renders `key` over `ctx` (JSON). A missing value is an error naming the path.
    pub fn render(&self, key: &str, ctx: &serde_json::Value) -> Result<String, RenderError> {
        self.registry.render(key, ctx).map_err(|e| RenderError {
            message: e.to_string(),
        })
    }
}

fn identity_helper(
    h: &handlebars::Helper<'_>,
    _: &Handlebars<'_>,
    _: &handlebars::Context,
    _: &mut handlebars::RenderContext<'_, '_>,
    out: &mut dyn handlebars::Output,
) -> handlebars::HelperResult {
    let text = match h.param(0).map(|p| p.value()) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Null) | None => h
            .param(1)
            .map(|p| p.value().to_string().trim_matches('"').to_string())
            .unwrap_or_default(),
        Some(other) => other.to_string(),
    };
    out.write(&text)?;
    Ok(())
}

fn check_helpers(template: &Template) -> Result<(), TemplateSyntaxError> {
    for (i, element) in template.elements.iter().enumerate() {
        let pos = template.mapping.get(i).map(|m| (m.0, m.1));
        check_element(element, pos)?;
    }
    Ok(())
}

fn check_element(
    element: &TemplateElement,
    pos: Option<(usize, usize)>,
) -> Result<(), TemplateSyntaxError> {
    let helper = match element {
        TemplateElement::Expression(h)
        | TemplateElement::HtmlExpression(h)
        | TemplateElement::HelperBlock(h) => h,
        _ => return Ok(()),
    };
    let is_call = helper.block || !helper.params.is_empty() || !helper.hash.is_empty();
    if let (true, Parameter::Name(name)) = (is_call, &helper.name) {
        if !CLINIC_HELPERS.contains(&name.as_str()) && !BUILTIN_HELPERS.contains(&name.as_str()) {
            return Err(TemplateSyntaxError {
                message: format!("unknown helper `{name}`"),
                line: pos.map(|p| p.0),
                column: pos.map(|p| p.1),
            });
        }
    }
    for param in &helper.params {
        if let Parameter::Subexpression(sub) = param {
            check_element(&sub.element, pos)?;
        }
    }
    for inner in [&helper.template, &helper.inverse].into_iter().flatten() {
        check_helpers(inner)?;
    }
    Ok(())
}

/// Distinct `{n}` placeholders in a provider template body, e.g. {1,2,3}.
pub fn placeholders(body: &str) -> BTreeSet<usize> {
    let mut found = BTreeSet::new();
    let mut rest = body;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let digits: String = after.chars().take_while(|c| c.is_ascii_digit()).collect();
        if !digits.is_empty() && after[digits.len()..].starts_with('}') {
            if let Ok(n) = digits.parse() {
                found.insert(n);
            }
        }
        rest = after;
    }
    found
}

/// The body with `{n}` replaced by `vars[n-1]`: the exact text the patient reads.
pub fn place_variables(body: &str, vars: &[String]) -> String {
    let mut out = body.to_string();
    for (i, value) in vars.iter().enumerate().rev() {
        out = out.replace(&format!("{{{}}}", i + 1), value);
    }
    out
}

/// Checks one rendered variable for the provider: non-empty after trim, no `[` or `]`.
pub fn check_variable(value: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err("is empty".into());
    }
    if value.contains('[') || value.contains(']') {
        return Err("holds `[` or `]`, which the provider uses to separate variables".into());
    }
    Ok(())
}
