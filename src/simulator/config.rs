//! The simulator's configuration: accounts, templates, webhook, delays, scripted failures and
//! patients. Read from YAML (`deploy/simulator.yaml`) or built in code; `SimConfig::demo()` is
//! what `recuerda demo` and a bare `recuerda simulator` run.

use crate::secret::Secret;
use serde::{Deserialize, Deserializer};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

/// The demo account's login and token: the ones PRODUCT.md's example `recuerda.yaml` carries, so
/// that example works against a bare `recuerda simulator` unchanged.
pub const DEMO_LOGIN: &str = "demo@gmail.com";
pub const DEMO_TOKEN: &str = "b6fd61ec974d1652082a802a4d8e443712138ed";

#[derive(Debug, thiserror::Error)]
pub enum SimConfigError {
    #[error("cannot read simulator config `{path}`: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("simulator config `{path}`: {message}")]
    Parse { path: String, message: String },
    /// Every problem found, one per line.
    #[error("simulator config `{path}` has {} problem(s):\n  {}", problems.len(), problems.join("\n  "))]
    Invalid { path: String, problems: Vec<String> },
}

/// What the fake provider knows. Every field has a default except `accounts`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    pub accounts: Vec<Account>,
    #[serde(default)]
    pub templates: Vec<SimTemplate>,
    /// Where callbacks are POSTed; none are made until it is set (here or at runtime).
    #[serde(default)]
    pub webhook_url: Option<String>,
    #[serde(default)]
    pub delays: Delays,
    /// Mobile → webhook `failed` code (1002–1011): sends to it are accepted (code 1), then fail.
    #[serde(default, deserialize_with = "mobile_keys")]
    pub failures: BTreeMap<String, u16>,
    /// Mobile → how that patient behaves.
    #[serde(default, deserialize_with = "mobile_keys")]
    pub patients: BTreeMap<String, PatientScript>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    pub login: String,
    pub token: Secret,
    pub balance: u64,
    /// `false` models an account without chatbot/multiagent: every call answers code 3.
    #[serde(default = "yes")]
    pub chatbot: bool,
    /// Ids of the templates this account owns; absent means every configured template.
    #[serde(default)]
    pub templates: Option<Vec<u32>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimTemplate {
    pub id: u32,
    pub name: String,
    /// With `{1}`…`{n}` placeholders.
    pub body: String,
    #[serde(default)]
    pub status: TemplateStatus,
}

/// WhatsApp's verdict on a template. Only an `aprobada` template can be sent (else code 7).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TemplateStatus {
    #[default]
    Aprobada,
    Pendiente,
    Rechazada,
}

/// When each callback goes out, measured from the moment the send was accepted (not from the
/// previous event), so a timeline is explicit and an out-of-order one (`read` before
/// `delivered`) is just a config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Delays {
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub sent: Duration,
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub delivered: Duration,
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub read: Duration,
    /// For scripted replies that give no `delay` of their own.
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub reply: Duration,
}

impl Default for Delays {
    fn default() -> Self {
        Delays {
            sent: Duration::from_millis(50),
            delivered: Duration::from_millis(100),
            read: Duration::from_millis(200),
            reply: Duration::from_millis(300),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatientScript {
    /// Each reply answers the next message accepted for this mobile, in order.
    #[serde(default)]
    pub replies: Vec<ScriptedReply>,
    /// `false`: this patient never reads (no `read` event), though scripted replies still come.
    #[serde(default = "yes")]
    pub read: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedReply {
    pub text: String,
    /// From the moment the answered send was accepted; default `delays.reply`.
    #[serde(default, deserialize_with = "optional_duration")]
    pub delay: Option<Duration>,
}

fn yes() -> bool {
    true
}

fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    crate::duration::deserialize(d).map(Some)
}

/// Mobiles are map keys; YAML reads an unquoted `573001112233` as a number, which is what ops
/// will write, so both forms are taken.
fn mobile_keys<'de, D, V>(d: D) -> Result<BTreeMap<String, V>, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    #[derive(Deserialize, PartialEq, Eq, PartialOrd, Ord)]
    #[serde(untagged)]
    enum Key {
        Text(String),
        Number(u64),
    }
    let map = BTreeMap::<Key, V>::deserialize(d)?;
    Ok(map
        .into_iter()
        .map(|(k, v)| match k {
            Key::Text(s) => (s, v),
            Key::Number(n) => (n.to_string(), v),
        })
        .collect())
}

/// The webhook `failed` codes the provider documents, with its own reason text.
pub const FAILURE_REASONS: &[(u16, &str)] = &[
    (1002, "Número no activo para enviar mensajes a whatsapp"),
    (1003, "No se puede enviar el mensaje Verifique el saldo de su billetera"),
    (1004, "El envío del mensaje falló porque el usuario está inactivo para el mensaje de sesión y la mensajería de plantilla está deshabilitada"),
    (1005, "El envío del mensaje falló porque la plantilla no coincidió"),
    (1006, "El envío del mensaje falló porque el usuario está inactivo para el mensaje de sesión y no ha optado por el mensaje de plantilla"),
    (1007, "El envío del mensaje falló porque el usuario está inactivo para el mensaje de sesión, no ha optado por el mensaje de plantilla y la plantilla no coincide"),
    (1008, "Falta parámetros obligatorios en la plantilla"),
    (1010, "URL de medios no válida"),
    (1011, "Tamaño de mensaje no válido"),
];

/// The provider's reason for a `failed` code, `None` if it documents no such code.
pub fn failure_reason(code: u16) -> Option<&'static str> {
    FAILURE_REASONS
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, reason)| *reason)
}

/// Colombian mobile as the provider checks it: 12 digits starting with `57`.
pub fn is_valid_mobile(mobile: &str) -> bool {
    mobile.len() == 12 && mobile.starts_with("57") && mobile.bytes().all(|b| b.is_ascii_digit())
}

/// Distinct `{n}` placeholders in a template body: the variable count a send must carry.
pub fn placeholder_count(body: &str) -> usize {
    let mut seen = BTreeSet::new();
    let mut rest = body;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && after[digits..].starts_with('}') {
            seen.insert(&after[..digits]);
        }
        rest = after;
    }
    seen.len()
}

impl SimConfig {
    /// One account (`demo@gmail.com`) with a large balance, the provider document's two
    /// templates (ids 980, 981) and generic clinic templates 990–995.
    pub fn demo() -> SimConfig {
        let template = |id, name: &str, body: &str| SimTemplate {
            id,
            name: name.into(),
            body: body.into(),
            status: TemplateStatus::Aprobada,
        };
        SimConfig {
            accounts: vec![Account {
                login: DEMO_LOGIN.into(),
                token: Secret::new(DEMO_TOKEN),
                balance: 1_000_000,
                chatbot: true,
                templates: None,
            }],
            templates: vec![
                template(
                    980,
                    "Asignación de cita",
                    "¡Hola *{1}*! A continuación, le presentamos información de su cita *asignada* en modalidad *presencial* con el profesional *{2}*\n\nFecha y hora: *{3}*",
                ),
                template(
                    981,
                    "Modificación de cita",
                    "Hola *{1}*! A continuación, le presentamos información de su cita *modificada* en modalidad *presencial* con el profesional *{2}*\n\nFecha y hora: *{3}*",
                ),
                template(
                    990,
                    "Recordatorio de cita",
                    "Hola *{1}*, le recordamos su cita con *{2}* el *{3}* a las *{4}*. Responda 1 para confirmar o 2 para cancelar.",
                ),
                template(
                    991,
                    "Confirmación de cita",
                    "Gracias *{1}*, su cita del *{2}* a las *{3}* quedó confirmada. ¡Le esperamos!",
                ),
                template(
                    992,
                    "Cancelación de cita",
                    "Hola *{1}*, su cita del *{2}* quedó cancelada. Si desea reprogramarla, escríbanos o llame a la clínica.",
                ),
                template(
                    993,
                    "Recordatorio del mismo día",
                    "Hola *{1}*, le recordamos que hoy a las *{2}* tiene cita con *{3}*.",
                ),
                template(
                    994,
                    "Seguimiento sin respuesta",
                    "Hola *{1}*, aún no recibimos su confirmación para la cita del *{2}*. Responda 1 para confirmar o 2 para cancelar.",
                ),
                template(995, "Aviso general", "{1}"),
            ],
            webhook_url: None,
            delays: Delays::default(),
            failures: BTreeMap::new(),
            patients: BTreeMap::new(),
        }
    }

    /// Reads and checks a YAML file.
    pub fn load(path: &Path) -> Result<SimConfig, SimConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SimConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::from_yaml(&text, &shown)
    }

    /// Parses and checks YAML text; `shown` names its source in errors.
    pub fn from_yaml(text: &str, shown: &str) -> Result<SimConfig, SimConfigError> {
        let config: SimConfig = serde_yaml::from_str(text).map_err(|e| SimConfigError::Parse {
            path: shown.into(),
            message: e.to_string(),
        })?;
        config
            .validate()
            .map_err(|problems| SimConfigError::Invalid {
                path: shown.into(),
                problems,
            })?;
        Ok(config)
    }

    /// Every problem at once, so one edit can fix them all.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if self.accounts.is_empty() {
            problems
                .push("`accounts` is empty: give at least one `login`, `token`, `balance`".into());
        }
        let mut logins = BTreeSet::new();
        for account in &self.accounts {
            if account.login.trim().is_empty() {
                problems.push("an account has an empty `login`".into());
            } else if !logins.insert(account.login.as_str()) {
                problems.push(format!("account `{}` is listed twice", account.login));
            }
            if account.token.is_empty() {
                problems.push(format!("account `{}` has an empty `token`", account.login));
            }
            for id in account.templates.iter().flatten() {
                if !self.templates.iter().any(|t| t.id == *id) {
                    problems.push(format!(
                        "account `{}` lists template `{id}`, which is not under `templates`",
                        account.login
                    ));
                }
            }
        }
        let mut ids = BTreeSet::new();
        for template in &self.templates {
            if !ids.insert(template.id) {
                problems.push(format!("template `{}` is listed twice", template.id));
            }
            if template.body.trim().is_empty() {
                problems.push(format!("template `{}` has an empty `body`", template.id));
            }
        }
        if let Some(url) = &self.webhook_url {
            if let Err(e) = check_webhook_url(url) {
                problems.push(e);
            }
        }
        for (mobile, code) in &self.failures {
            if !is_valid_mobile(mobile) {
                problems.push(format!(
                    "`failures`: `{mobile}` is not a mobile the provider accepts (12 digits starting with 57)"
                ));
            }
            if failure_reason(*code).is_none() {
                problems.push(format!(
                    "`failures`: `{mobile}: {code}` is not a documented failure code: use 1002–1008, 1010 or 1011"
                ));
            }
        }
        for mobile in self.patients.keys() {
            if !is_valid_mobile(mobile) {
                problems.push(format!(
                    "`patients`: `{mobile}` is not a mobile the provider accepts (12 digits starting with 57)"
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// The templates `login` owns, in config order.
    pub(crate) fn templates_of<'a>(&'a self, account: &'a Account) -> Vec<&'a SimTemplate> {
        self.templates
            .iter()
            .filter(|t| match &account.templates {
                Some(ids) => ids.contains(&t.id),
                None => true,
            })
            .collect()
    }
}

/// An `http`/`https` URL with a host, else a message saying what to write.
pub(crate) fn check_webhook_url(url: &str) -> Result<(), String> {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        _ => Err(format!(
            "webhook URL `{}` is not an http(s) URL: write it as `http://127.0.0.1:8080/webhook/<secret>`",
            mask_url(url)
        )),
    }
}

/// A webhook URL for logs and records: scheme, host and first path segment, the rest `***`,
/// because the engine's webhook path carries its secret.
pub fn mask_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            let origin = u.origin().ascii_serialization();
            let mut segments = u.path().trim_start_matches('/').splitn(2, '/');
            match (segments.next(), segments.next()) {
                (Some(first), Some(_)) => format!("{origin}/{first}/***"),
                (Some(""), None) | (None, _) => origin,
                (Some(_), None) => format!("{origin}/***"),
            }
        }
        Err(_) => "***".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_distinct_placeholders() {
        assert_eq!(placeholder_count("Hola {1}, {2} y {1}"), 2);
        assert_eq!(placeholder_count("sin variables {x} {}"), 0);
        assert_eq!(placeholder_count("{1}"), 1);
        assert_eq!(placeholder_count("{{1}}"), 1);
    }

    #[test]
    fn demo_is_valid() {
        assert_eq!(SimConfig::demo().validate(), Ok(()));
    }

    #[test]
    fn masks_the_secret_path() {
        assert_eq!(
            mask_url("http://127.0.0.1:8080/webhook/s3cr3t"),
            "http://127.0.0.1:8080/webhook/***"
        );
        assert_eq!(mask_url("http://h:1/s3cr3t"), "http://h:1/***");
        assert_eq!(mask_url("http://h:1/"), "http://h:1");
    }

    #[test]
    fn collects_every_problem() {
        let yaml = r#"
accounts:
  - {login: a, token: "", balance: 1, templates: [7]}
failures: {573001112233: 1009, "123": 1002}
"#;
        let err = SimConfig::from_yaml(yaml, "sim.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("empty `token`"), "{err}");
        assert!(err.contains("template `7`"), "{err}");
        assert!(err.contains("1009"), "{err}");
        assert!(err.contains("`123`"), "{err}");
    }

    #[test]
    fn refuses_unknown_keys() {
        let err = SimConfig::from_yaml("accounts: []\nwebhook: x\n", "sim.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `webhook`"), "{err}");
    }
}
