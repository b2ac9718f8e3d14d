//! `recuerda.yaml`: every key has a default; secrets may also come from the environment.

use crate::secret::Secret;
use chrono::NaiveTime;
use chrono_tz::Tz;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_BASE_URL: &str = "https://contacto-virtual.com/bot/chat_wa/ws";
pub const DEFAULT_CONFIG_FILE: &str = "recuerda.yaml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config `{path}`: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config `{path}`: {message}")]
    Parse { path: String, message: String },
    #[error("config: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The file this came from, if any (relative paths inside it are relative to its folder).
    pub source: Option<PathBuf>,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub rules_dir: PathBuf,
    pub templates_dir: PathBuf,
    pub timezone: Tz,
    pub provider: ProviderConfig,
    pub webhook: WebhookConfig,
    pub api: ApiConfig,
    pub notify: BTreeMap<String, NotifyEndpoint>,
    pub quiet_hours: Option<QuietHours>,
    pub opt_out: OptOutConfig,
    pub schedule: ScheduleConfig,
    pub balance: BalanceConfig,
    pub http: HttpConfig,
}

/// The low-balance guard: the provider's balance is polled, and checked before a cron
/// fan-out; when it is below `alert_below` or cannot cover the sends about to go, recuerda
/// logs it, shows it in `/healthz` and `/metrics`, and notifies `notify` (once a day).
#[derive(Debug, Clone)]
pub struct BalanceConfig {
    pub poll: Duration,
    pub alert_below: i64,
    /// A name under `notify:`.
    pub notify: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// No trailing slash; the client appends `/send/`, `/balance/`, `/template/`.
    pub base_url: String,
    pub login: Option<String>,
    pub token: Option<Secret>,
    pub rate_per_second: u32,
    pub concurrency: usize,
    pub resend_unknown: bool,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    /// Attempts for sends that provably did not happen (connect errors, 429, 5xx).
    pub max_attempts: u32,
    /// First retry delay; doubles each attempt, with jitter.
    pub retry_base: Duration,
    /// While paused for balance (code 5), how often `balance` is polled.
    pub balance_poll: Duration,
}

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub secret: Option<Secret>,
    /// An identical reply `(mobile, message, custom_field)` within this window is the provider
    /// retrying, not a new reply.
    pub dedupe_window: Duration,
    pub max_body_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub token: Option<Secret>,
    pub max_body_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyEndpoint {
    pub url: String,
    #[serde(
        default = "default_notify_timeout",
        deserialize_with = "crate::duration::deserialize"
    )]
    pub timeout: Duration,
}

fn default_notify_timeout() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietHours {
    pub from: NaiveTime,
    pub to: NaiveTime,
}

impl QuietHours {
    /// True when `t` (wall time in the clinic's zone) falls inside the quiet window. The window
    /// may wrap midnight (`20:00`–`07:00`).
    pub fn contains(&self, t: NaiveTime) -> bool {
        if self.from <= self.to {
            t >= self.from && t < self.to
        } else {
            t >= self.from || t < self.to
        }
    }
}

#[derive(Debug, Clone)]
pub struct OptOutConfig {
    pub stop: Vec<String>,
    pub start: Vec<String>,
}

impl Default for OptOutConfig {
    fn default() -> Self {
        OptOutConfig {
            stop: ["BAJA", "STOP", "PARAR", "CANCELAR SUSCRIPCION"]
                .map(String::from)
                .to_vec(),
            start: ["ALTA", "START"].map(String::from).to_vec(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ScheduleConfig {
    /// Default grace for catching up cron slots and due entries missed while down.
    pub catch_up: Duration,
    /// How often the rules and templates folders are compared with what is loaded, besides
    /// file-system events (which bind mounts may not deliver).
    pub reload_poll: Duration,
}

/// Bounds on what one HTTP client may hold: a slow or idle client is cut, not waited for.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Time a client has to send a request's headers, and the most a kept-alive connection
    /// may sit idle between requests.
    pub header_read_timeout: Duration,
    /// Time for a whole request, body included, from its headers to the answer.
    pub request_timeout: Duration,
}

// ---- raw file shape -------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    rules_dir: Option<PathBuf>,
    templates_dir: Option<PathBuf>,
    timezone: Option<String>,
    #[serde(default)]
    provider: RawProvider,
    #[serde(default)]
    webhook: RawWebhook,
    #[serde(default)]
    api: RawApi,
    #[serde(default)]
    notify: BTreeMap<String, NotifyEndpoint>,
    quiet_hours: Option<RawQuietHours>,
    opt_out: Option<RawOptOut>,
    #[serde(default)]
    schedule: RawSchedule,
    #[serde(default)]
    balance: RawBalance,
    #[serde(default)]
    http: RawHttp,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    base_url: Option<String>,
    login: Option<String>,
    token: Option<Secret>,
    rate_per_second: Option<u32>,
    concurrency: Option<usize>,
    resend_unknown: Option<bool>,
    connect_timeout: Option<String>,
    timeout: Option<String>,
    max_attempts: Option<u32>,
    retry_base: Option<String>,
    balance_poll: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    secret: Option<Secret>,
    dedupe_window: Option<String>,
    max_body_bytes: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    token: Option<Secret>,
    max_body_bytes: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuietHours {
    from: String,
    to: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOptOut {
    stop: Option<Vec<String>>,
    start: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    catch_up: Option<String>,
    reload_poll: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBalance {
    poll: Option<String>,
    alert_below: Option<i64>,
    notify: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    header_read_timeout: Option<String>,
    request_timeout: Option<String>,
}

/// Where secrets come from besides the file; tests pass their own map instead of the process env.
pub trait Env {
    fn var(&self, key: &str) -> Option<String>;
}

pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok().filter(|v| !v.is_empty())
    }
}

impl Env for BTreeMap<String, String> {
    fn var(&self, key: &str) -> Option<String> {
        self.get(key).cloned()
    }
}

impl Config {
    /// Loads `path`, or `recuerda.yaml` in the current folder when `path` is `None` and that
    /// file exists, else the defaults. Environment variables override the file's secrets.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(path, &ProcessEnv)
    }

    pub fn load_with_env(path: Option<&Path>, env: &dyn Env) -> Result<Config, ConfigError> {
        let path = match path {
            Some(p) => Some(p.to_path_buf()),
            None => {
                let default = PathBuf::from(DEFAULT_CONFIG_FILE);
                default.exists().then_some(default)
            }
        };
        match path {
            Some(p) => {
                let text = std::fs::read_to_string(&p).map_err(|source| ConfigError::Read {
                    path: p.display().to_string(),
                    source,
                })?;
                Self::from_yaml(&text, Some(&p), env)
            }
            None => Self::from_yaml("", None, env),
        }
    }

    /// Parses config text. `source` is the file it came from: relative paths in it are taken
    /// from that file's folder, so `--config deploy/recuerda.yaml` works from anywhere.
    pub fn from_yaml(
        text: &str,
        source: Option<&Path>,
        env: &dyn Env,
    ) -> Result<Config, ConfigError> {
        let shown = source
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "<defaults>".into());
        let raw: RawConfig = if text.trim().is_empty() {
            RawConfig::default()
        } else {
            serde_yaml::from_str(text).map_err(|e| ConfigError::Parse {
                path: shown.clone(),
                message: e.to_string(),
            })?
        };
        let invalid = |msg: String| ConfigError::Parse {
            path: shown.clone(),
            message: msg,
        };
        let base_dir = source
            .and_then(|p| p.parent())
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let resolve = |p: Option<PathBuf>, default: &str| {
            let p = p.unwrap_or_else(|| PathBuf::from(default));
            if p.is_absolute() {
                p
            } else {
                base_dir.join(p)
            }
        };
        let listen_text = raw.listen.unwrap_or_else(|| "127.0.0.1:8080".into());
        let listen = listen_text.parse().map_err(|_| {
            invalid(format!(
                "`listen: {listen_text}` is not an address: write it as `127.0.0.1:8080` or `0.0.0.0:8080`"
            ))
        })?;
        let tz_text = raw.timezone.unwrap_or_else(|| "America/Bogota".into());
        let timezone: Tz = tz_text.parse().map_err(|_| {
            invalid(format!(
                "`timezone: {tz_text}` is not a known time zone: use an IANA name such as `America/Bogota`"
            ))
        })?;
        let dur = |key: &str,
                   value: Option<String>,
                   default: Duration|
         -> Result<Duration, ConfigError> {
            match value {
                None => Ok(default),
                Some(v) => crate::duration::parse_duration(&v)
                    .map_err(|e| invalid(format!("`{key}`: {e}"))),
            }
        };
        let p = raw.provider;
        let base_url = p
            .base_url
            .unwrap_or_else(|| DEFAULT_BASE_URL.into())
            .trim_end_matches('/')
            .to_string();
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(invalid(format!(
                "`provider.base_url: {base_url}` must start with `https://` (or `http://` for a local simulator)"
            )));
        }
        let rate_per_second = p.rate_per_second.unwrap_or(20);
        if rate_per_second == 0 {
            return Err(invalid(
                "`provider.rate_per_second` must be at least 1".into(),
            ));
        }
        let concurrency = p.concurrency.unwrap_or(4);
        if concurrency == 0 {
            return Err(invalid("`provider.concurrency` must be at least 1".into()));
        }
        let provider = ProviderConfig {
            base_url,
            login: env.var("RECUERDA_PROVIDER_LOGIN").or(p.login),
            token: env
                .var("RECUERDA_PROVIDER_TOKEN")
                .map(Secret::new)
                .or(p.token),
            rate_per_second,
            concurrency,
            resend_unknown: p.resend_unknown.unwrap_or(false),
            connect_timeout: dur(
                "provider.connect_timeout",
                p.connect_timeout,
                Duration::from_secs(5),
            )?,
            timeout: dur("provider.timeout", p.timeout, Duration::from_secs(30))?,
            max_attempts: p.max_attempts.unwrap_or(6).max(1),
            retry_base: dur(
                "provider.retry_base",
                p.retry_base,
                Duration::from_millis(500),
            )?,
            balance_poll: dur(
                "provider.balance_poll",
                p.balance_poll,
                Duration::from_secs(60),
            )?,
        };
        let webhook = WebhookConfig {
            secret: env
                .var("RECUERDA_WEBHOOK_SECRET")
                .map(Secret::new)
                .or(raw.webhook.secret),
            dedupe_window: dur(
                "webhook.dedupe_window",
                raw.webhook.dedupe_window,
                Duration::from_secs(60),
            )?,
            max_body_bytes: raw.webhook.max_body_bytes.unwrap_or(64 * 1024),
        };
        if let Some(s) = &webhook.secret {
            if s.expose().len() < 32 {
                return Err(invalid(
                    "`webhook.secret` is shorter than 32 characters: it is the only thing guarding the webhook, use 32+ random characters".into(),
                ));
            }
        }
        let api = ApiConfig {
            token: env
                .var("RECUERDA_API_TOKEN")
                .map(Secret::new)
                .or(raw.api.token),
            max_body_bytes: raw.api.max_body_bytes.unwrap_or(1024 * 1024),
        };
        for (name, endpoint) in &raw.notify {
            if !(endpoint.url.starts_with("http://") || endpoint.url.starts_with("https://")) {
                return Err(invalid(format!(
                    "`notify.{name}.url` must be an http:// or https:// URL"
                )));
            }
        }
        let quiet_hours = match raw.quiet_hours {
            None => None,
            Some(q) => {
                let parse = |key: &str, v: &str| {
                    NaiveTime::parse_from_str(v, "%H:%M").map_err(|_| {
                        invalid(format!(
                            "`quiet_hours.{key}: {v}` is not a time: write it as `20:00`"
                        ))
                    })
                };
                Some(QuietHours {
                    from: parse("from", &q.from)?,
                    to: parse("to", &q.to)?,
                })
            }
        };
        let opt_out = match raw.opt_out {
            None => OptOutConfig::default(),
            Some(o) => {
                let d = OptOutConfig::default();
                OptOutConfig {
                    stop: o.stop.unwrap_or(d.stop),
                    start: o.start.unwrap_or(d.start),
                }
            }
        };
        let schedule = ScheduleConfig {
            catch_up: dur(
                "schedule.catch_up",
                raw.schedule.catch_up,
                Duration::from_secs(6 * 3600),
            )?,
            reload_poll: dur(
                "schedule.reload_poll",
                raw.schedule.reload_poll,
                Duration::from_secs(5),
            )?,
        };
        if let Some(name) = &raw.balance.notify {
            if !raw.notify.contains_key(name) {
                return Err(invalid(format!(
                    "`balance.notify: {name}` is not under `notify:`: add `notify.{name}.url` or remove it"
                )));
            }
        }
        let balance = BalanceConfig {
            poll: dur(
                "balance.poll",
                raw.balance.poll,
                Duration::from_secs(15 * 60),
            )?,
            alert_below: raw.balance.alert_below.unwrap_or(50),
            notify: raw.balance.notify,
        };
        let http = HttpConfig {
            header_read_timeout: dur(
                "http.header_read_timeout",
                raw.http.header_read_timeout,
                Duration::from_secs(10),
            )?,
            request_timeout: dur(
                "http.request_timeout",
                raw.http.request_timeout,
                Duration::from_secs(30),
            )?,
        };
        if http.header_read_timeout.is_zero() || http.request_timeout.is_zero() {
            return Err(invalid(
                "`http.header_read_timeout` and `http.request_timeout` must be longer than 0s"
                    .into(),
            ));
        }
        Ok(Config {
            source: source.map(Path::to_path_buf),
            listen,
            data_dir: resolve(raw.data_dir, "data"),
            rules_dir: resolve(raw.rules_dir, "rules"),
            templates_dir: resolve(raw.templates_dir, "templates"),
            timezone,
            provider,
            webhook,
            api,
            notify: raw.notify,
            quiet_hours,
            opt_out,
            schedule,
            balance,
            http,
        })
    }

    /// The provider's credentials, or an error that says where to put them.
    pub fn credentials(&self) -> Result<(String, Secret), ConfigError> {
        let login = self.provider.login.clone().ok_or_else(|| {
            ConfigError::Invalid(
                "no provider login: set `provider.login` in recuerda.yaml or RECUERDA_PROVIDER_LOGIN".into(),
            )
        })?;
        let token = self.provider.token.clone().ok_or_else(|| {
            ConfigError::Invalid(
                "no provider token: set `provider.token` in recuerda.yaml or RECUERDA_PROVIDER_TOKEN".into(),
            )
        })?;
        Ok((login, token))
    }
}

impl Default for Config {
    fn default() -> Self {
        // The empty document always parses: every key has a default.
        match Config::from_yaml("", None, &BTreeMap::new()) {
            Ok(c) => c,
            Err(e) => unreachable!("defaults must parse: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_env_override() {
        let env: BTreeMap<String, String> = [(
            "RECUERDA_PROVIDER_TOKEN".to_string(),
            "from-env".to_string(),
        )]
        .into();
        let c = Config::from_yaml(
            "provider:\n  login: demo@gmail.com\n  token: from-file\nquiet_hours: {from: \"20:00\", to: \"07:00\"}\n",
            Some(Path::new("conf/recuerda.yaml")),
            &env,
        )
        .unwrap();
        assert_eq!(c.provider.token.unwrap().expose(), "from-env");
        assert_eq!(c.provider.login.as_deref(), Some("demo@gmail.com"));
        assert_eq!(c.data_dir, PathBuf::from("conf/data"));
        assert_eq!(c.provider.base_url, DEFAULT_BASE_URL);
        assert_eq!(c.timezone, chrono_tz::America::Bogota);
        let q = c.quiet_hours.unwrap();
        assert!(q.contains(NaiveTime::from_hms_opt(22, 0, 0).unwrap()));
        assert!(q.contains(NaiveTime::from_hms_opt(6, 59, 0).unwrap()));
        assert!(!q.contains(NaiveTime::from_hms_opt(7, 0, 0).unwrap()));
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_yaml("provder: {}\n", None, &BTreeMap::new()).unwrap_err();
        assert!(err.to_string().contains("provder"), "{err}");
    }

    #[test]
    fn short_webhook_secret_is_refused_without_echoing_it() {
        let err =
            Config::from_yaml("webhook: {secret: abc123}\n", None, &BTreeMap::new()).unwrap_err();
        assert!(err.to_string().contains("32"), "{err}");
        assert!(!err.to_string().contains("abc123"));
    }
}
