//! `RuleSet`: the loaded, checked rules and templates with their compiled Handlebars, and the
//! questions the engine asks of them (which reply rule matches, what a send renders to, when a
//! cron fires next, which appointments a `for_each` selects).

use super::diagnostic::{summary, Diagnostic};
use super::load;
use super::model::*;
use crate::config::Config;
use crate::render::{self, RenderError, Renderer};
use chrono::{DateTime, Duration as ChronoDuration, NaiveDate, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub struct RuleSet {
    /// In load order: files by name, rules in file order. This is the reply routing order.
    pub rules: Vec<SharedRule>,
    pub templates: BTreeMap<u32, Template>,
    pub renderer: Renderer,
    /// Reply routing, built from `rules` at load.
    pub reply_index: super::routing::ReplyIndex,
}

/// A successful load: the set, and warnings worth showing.
#[derive(Debug)]
pub struct Loaded {
    pub set: RuleSet,
    pub warnings: Vec<Diagnostic>,
}

/// A failed load: every error and warning found, in file order.
#[derive(Debug, Clone)]
pub struct LoadErrors {
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let first = self
            .diagnostics
            .iter()
            .find(|d| d.is_error())
            .map(|d| {
                let at = d
                    .location
                    .as_ref()
                    .map(|l| format!(" at {l}"))
                    .unwrap_or_default();
                format!(" (first: {}{at})", d.message)
            })
            .unwrap_or_default();
        write!(
            f,
            "rule and template files have {}{first}: run `recuerda check` for all of them",
            summary(&self.diagnostics)
        )
    }
}

impl std::error::Error for LoadErrors {}

impl fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuleSet")
            .field(
                "rules",
                &self
                    .rules
                    .iter()
                    .map(|r| r.name.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("templates", &self.templates.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Default for RuleSet {
    /// No rules, no templates: what runs before the first successful load.
    fn default() -> Self {
        RuleSet {
            rules: Vec::new(),
            templates: BTreeMap::new(),
            renderer: Renderer::new(),
            reply_index: super::routing::ReplyIndex::build(&[]),
        }
    }
}

impl RuleSet {
    /// Loads `rules_dir/*.yaml` and `templates_dir/*.yaml` (files in name order), checking
    /// everything. `Err` holds every problem found, warnings included.
    pub fn load(
        rules_dir: &Path,
        templates_dir: &Path,
        config: &Config,
    ) -> Result<Loaded, LoadErrors> {
        Self::finish(load::load_dirs(rules_dir, templates_dir, config))
    }

    /// Like [`RuleSet::load`], from texts already in memory: `(path shown in messages, text)`.
    /// Rule files are taken in the order given.
    pub fn load_sources(
        template_files: &[(PathBuf, String)],
        rule_files: &[(PathBuf, String)],
        config: &Config,
    ) -> Result<Loaded, LoadErrors> {
        Self::finish(load::load_sources(template_files, rule_files, config))
    }

    fn finish(outcome: load::Outcome) -> Result<Loaded, LoadErrors> {
        if outcome.diagnostics.iter().any(Diagnostic::is_error) {
            return Err(LoadErrors {
                diagnostics: outcome.diagnostics,
            });
        }
        Ok(Loaded {
            set: RuleSet {
                reply_index: super::routing::ReplyIndex::build(&outcome.rules),
                rules: outcome.rules,
                templates: outcome.templates,
                renderer: outcome.renderer,
            },
            warnings: outcome.diagnostics,
        })
    }

    pub fn rule(&self, name: &str) -> Option<&SharedRule> {
        self.rules.iter().find(|r| r.name == name)
    }

    /// Enabled rules, in load order.
    pub fn enabled(&self) -> impl Iterator<Item = &SharedRule> {
        self.rules.iter().filter(|r| r.enabled)
    }

    /// Enabled cron rules with their trigger.
    pub fn cron_rules(&self) -> impl Iterator<Item = (&SharedRule, &CronTrigger)> {
        self.enabled().filter_map(|r| match &r.trigger {
            Trigger::Cron(t) => Some((r, t)),
            _ => None,
        })
    }

    /// Enabled `before:`/`after:` rules with their trigger.
    pub fn offset_rules(&self) -> impl Iterator<Item = (&SharedRule, &OffsetTrigger)> {
        self.enabled().filter_map(|r| match &r.trigger {
            Trigger::Offset(t) => Some((r, t)),
            _ => None,
        })
    }

    /// Enabled reply rules in routing order.
    pub fn reply_rules(&self) -> impl Iterator<Item = (&SharedRule, &ReplyTrigger)> {
        self.enabled().filter_map(|r| match &r.trigger {
            Trigger::Reply(t) => Some((r, t)),
            _ => None,
        })
    }

    /// Enabled rules triggered by a delivery event of `kind` about a message sent by rule
    /// `sent_by` (if known).
    pub fn status_rules<'a>(
        &'a self,
        kind: EventKind,
        sent_by: Option<&'a str>,
    ) -> impl Iterator<Item = &'a SharedRule> + 'a {
        self.enabled().filter(move |r| match &r.trigger {
            Trigger::Status(t) => {
                t.status == kind && t.rule.as_deref().is_none_or(|want| Some(want) == sent_by)
            }
            _ => false,
        })
    }

    /// Enabled `no_reply` rules watching messages sent by rule `sent_by`.
    pub fn no_reply_rules<'a>(
        &'a self,
        sent_by: &'a str,
    ) -> impl Iterator<Item = (&'a SharedRule, &'a NoReplyTrigger)> + 'a {
        self.enabled().filter_map(move |r| match &r.trigger {
            Trigger::NoReply(t) if t.rule == sent_by => Some((r, t)),
            _ => None,
        })
    }

    /// Enabled rules triggered by an appointment change.
    pub fn appointment_rules(
        &self,
        change: AppointmentChange,
    ) -> impl Iterator<Item = &SharedRule> {
        self.enabled()
            .filter(move |r| matches!(&r.trigger, Trigger::Appointment(c) if *c == change))
    }

    /// The reply rule that handles a reply: enabled reply rules in routing order, first match
    /// wins. `text` is trimmed; the regex is case-insensitive. `where:` is not looked at: use
    /// [`RuleSet::match_reply_in`] when the context is at hand.
    pub fn match_reply(
        &self,
        custom_field: Option<&str>,
        text: &str,
        state: Option<&str>,
    ) -> Option<&SharedRule> {
        self.route_reply(custom_field, text, state, |_| true)
    }

    /// The first reply rule, in routing order, that matches and passes `also`: through the
    /// index when it could be built, else by trying each rule.
    fn route_reply(
        &self,
        custom_field: Option<&str>,
        text: &str,
        state: Option<&str>,
        also: impl Fn(&SharedRule) -> bool,
    ) -> Option<&SharedRule> {
        match self.reply_index.candidates(custom_field, text) {
            Some(candidates) => candidates.into_iter().map(|i| &self.rules[i]).find(|r| {
                matches!(&r.trigger, Trigger::Reply(t) if t.state.as_deref().is_none_or(|want| state == Some(want)))
                    && also(r)
            }),
            None => self
                .reply_rules()
                .find(|(r, t)| t.matches(custom_field, text, state) && also(r))
                .map(|(r, _)| r),
        }
    }

    /// Like [`RuleSet::match_reply`], and the rule's `where:` must hold over `ctx`: a rule
    /// whose conditions fail lets the next one try.
    pub fn match_reply_in(
        &self,
        custom_field: Option<&str>,
        text: &str,
        state: Option<&str>,
        ctx: &Value,
    ) -> Option<&SharedRule> {
        self.route_reply(custom_field, text, state, |r| r.conditions_hold(ctx))
    }

    /// [`RuleSet::match_reply_in`] with the context made (once) only if a candidate has a
    /// `where:` (most reply rules have none). Making it may fail: that error, if it was made.
    pub fn match_reply_lazy<E>(
        &self,
        custom_field: Option<&str>,
        text: &str,
        state: Option<&str>,
        ctx: impl FnOnce() -> Result<Value, E>,
    ) -> Result<Option<&SharedRule>, E> {
        let made = std::cell::OnceCell::new();
        let ctx = std::cell::Cell::new(Some(ctx));
        let matched = self.route_reply(custom_field, text, state, |r| {
            r.conditions.is_empty()
                || matches!(
                    made.get_or_init(|| ctx.take().map_or(Ok(Value::Null), |f| f())),
                    Ok(v) if r.conditions_hold(v)
                )
        });
        match made.into_inner() {
            Some(Err(e)) => Err(e),
            _ => Ok(matched),
        }
    }

    /// The context with `rule: {name, description, timezone}` added.
    pub fn context_for(rule: &Rule, ctx: &Value) -> Value {
        let mut ctx = match ctx {
            Value::Object(map) => Value::Object(map.clone()),
            _ => Value::Object(serde_json::Map::new()),
        };
        if let Value::Object(map) = &mut ctx {
            map.insert(
                "rule".into(),
                serde_json::json!({
                    "name": rule.name,
                    "description": rule.description,
                    "timezone": rule.timezone.name(),
                }),
            );
        }
        ctx
    }

    /// Renders one `send` of `rule` over `ctx`: `to`, variables, `media`, `custom_field`, and
    /// the text the patient reads. A variable that renders empty or holds `[`/`]` is refused.
    pub fn render_send(
        &self,
        rule: &Rule,
        send: &SendAction,
        ctx: &Value,
    ) -> Result<RenderedSend, RenderError> {
        let ctx = render::Context::from(Self::context_for(rule, ctx));
        let render = |key: &str, what: &dyn std::fmt::Display| {
            self.renderer.render_in(key, &ctx).map_err(|e| RenderError {
                message: format!("rule `{}`: {what}: {}", rule.name, e.message),
            })
        };
        let mut variables = Vec::with_capacity(send.variables.len());
        for (i, key) in send.variables.iter().enumerate() {
            let n = i + 1;
            let value = render(key, &format_args!("variable {n}"))?;
            if let Err(problem) = render::check_variable(&value) {
                return Err(RenderError {
                    message: format!(
                        "rule `{}`: variable {n} of template `{}` is {value:?}, which {problem}",
                        rule.name, send.template_id
                    ),
                });
            }
            variables.push(value);
        }
        let optional = |key: &Option<String>, what: &str| match key {
            Some(k) => render(k, &what).map(Some),
            None => Ok(None),
        };
        let to = optional(&send.to, "`to`")?;
        let media = optional(&send.media, "`media`")?;
        let custom_field = optional(&send.custom_field, "`custom_field`")?;
        let body = self
            .templates
            .get(&send.template_id)
            .map(|t| t.body.as_str())
            .ok_or_else(|| RenderError {
                message: format!(
                    "rule `{}`: template `{}` is not loaded",
                    rule.name, send.template_id
                ),
            })?;
        Ok(RenderedSend {
            template_id: send.template_id,
            to,
            text: render::place_variables(body, &variables),
            variables,
            media,
            custom_field,
        })
    }

    /// Whether rendering `send` may read `root` of the context (see [`Renderer::may_read`]).
    pub fn send_reads(&self, send: &SendAction, root: &str) -> bool {
        send.variables
            .iter()
            .chain(send.to.iter())
            .chain(send.media.iter())
            .chain(send.custom_field.iter())
            .any(|key| self.renderer.may_read(key, root))
    }

    /// Renders a text registered under `key` (a notify message) for `rule` over `ctx`.
    pub fn render_text(&self, rule: &Rule, key: &str, ctx: &Value) -> Result<String, RenderError> {
        let ctx = render::Context::from(Self::context_for(rule, ctx));
        self.renderer.render_in(key, &ctx).map_err(|e| RenderError {
            message: format!("rule `{}`: {}", rule.name, e.message),
        })
    }
}

impl ReplyTrigger {
    /// True when a reply with this `custom_field`, `text` and conversation `state` matches.
    pub fn matches(&self, custom_field: Option<&str>, text: &str, state: Option<&str>) -> bool {
        let field_ok = match &self.custom_field_matcher {
            None => true,
            Some(m) => custom_field.is_some_and(|cf| m.is_match(cf)),
        };
        let text_ok = self.text.as_ref().is_none_or(|re| re.is_match(text.trim()));
        let state_ok = self.state.as_deref().is_none_or(|want| state == Some(want));
        field_ok && text_ok && state_ok
    }
}

impl Rule {
    /// True when every `where:` condition holds over `ctx`: the value at the dotted path equals
    /// one of the listed values. Text compares with numbers and booleans by value (`"3"` equals
    /// `3`, `"true"` equals `true`); a missing path only equals a listed `null`.
    pub fn conditions_hold(&self, ctx: &Value) -> bool {
        self.conditions.iter().all(|c| c.holds(ctx))
    }
}

impl Condition {
    pub fn holds(&self, ctx: &Value) -> bool {
        let found = lookup(ctx, &self.path);
        self.values.iter().any(|want| loosely_equal(found, want))
    }
}

/// The value at a dotted path (`appointment.sede`, `items.0.name`).
pub fn lookup<'v>(ctx: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.').try_fold(ctx, |v, part| match v {
        Value::Object(map) => map.get(part),
        Value::Array(items) => part.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

fn loosely_equal(found: Option<&Value>, want: &Value) -> bool {
    let Some(found) = found else {
        return want.is_null();
    };
    match (found, want) {
        (Value::String(a), Value::String(b)) => a == b,
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::String(s), Value::Number(n)) | (Value::Number(n), Value::String(s)) => {
            s.trim().parse::<f64>().ok() == n.as_f64()
        }
        (Value::String(s), Value::Bool(b)) | (Value::Bool(b), Value::String(s)) => s
            .trim()
            .eq_ignore_ascii_case(if *b { "true" } else { "false" }),
        (a, b) => a == b,
    }
}

impl StartsSelector {
    /// The half-open window `[from, to)` of appointment starts selected for a fire at `fire`:
    /// `today` is the fire time's calendar day in `tz`, `tomorrow` the next one, a window is
    /// `[fire + from, fire + to)`.
    pub fn window(&self, fire: DateTime<Utc>, tz: Tz) -> (DateTime<Utc>, DateTime<Utc>) {
        let local_day = fire.with_timezone(&tz).date_naive();
        let day = |d: NaiveDate| {
            let next = d.succ_opt().unwrap_or(d);
            (start_of_day(d, tz), start_of_day(next, tz))
        };
        match self {
            StartsSelector::Today => day(local_day),
            StartsSelector::Tomorrow => day(local_day.succ_opt().unwrap_or(local_day)),
            StartsSelector::Window { from, to } => {
                let add = |d: std::time::Duration| {
                    fire + ChronoDuration::from_std(d).unwrap_or(ChronoDuration::MAX)
                };
                (add(*from), add(*to))
            }
        }
    }
}

/// The first instant of `day` in `tz` (midnight, or the first hour after a DST gap).
fn start_of_day(day: NaiveDate, tz: Tz) -> DateTime<Utc> {
    (0..24)
        .find_map(|hour| {
            day.and_hms_opt(hour, 0, 0)
                .and_then(|t| tz.from_local_datetime(&t).earliest())
        })
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| day.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc())
}

impl CronTrigger {
    /// The first fire time strictly after `after`, evaluated in `tz` with the scheduler's own
    /// cron semantics (seconds field, day-of-month AND day-of-week). `None` when the expression
    /// never fires again (or, which the loader prevents, does not parse).
    pub fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let cron = self.parsed.as_ref()?;
        // Slots are whole seconds; croner would carry a fraction through to the answer.
        let after = after.with_nanosecond(0).unwrap_or(after);
        cron.find_next_occurrence(&after.with_timezone(&tz), false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
}
