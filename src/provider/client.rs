//! The HTTP client for the provider's three calls: `send`, `balance`, `templates`. It alone
//! knows the wire format (multipart for `send`, url-encoded forms for the others, the answers'
//! quirks) and turns every outcome into a typed value or a [`ProviderError`].

use super::error::{consequence, excerpt, Call, ProviderCode, ProviderError};
use super::transport::{Failure, Route, Transport};
use super::types::{count_placeholders, MessageId, SendRequest};
use crate::config::ProviderConfig;
use crate::secret::Secret;
use hyper::header::HeaderValue;
use hyper::{StatusCode, Uri};
use reqwest::Url;
use serde_json::Value;
use std::fmt;
use std::time::Duration;

/// A template as the provider lists it (`POST /template/`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RemoteTemplate {
    /// The numeric id, when the answer carries one (`id_template` or `id`); the provider's
    /// documentation shows none.
    pub id: Option<u32>,
    /// `nombre_plantilla`.
    pub name: String,
    /// `plantilla_aprobada`: the body with `{1}…{n}` placeholders.
    pub body: String,
    /// `status` as the provider wrote it.
    pub status: String,
    /// Distinct `{n}` placeholders in `body`.
    pub placeholders: usize,
}

/// A client for one provider account. Cheap to clone (the connection pool is shared).
#[derive(Clone)]
pub struct Client {
    http: Transport,
    base_url: String,
    /// The calls' URLs, parsed once (parsing the send's for every send was ~0.5 % of a
    /// reply's CPU).
    send_url: Uri,
    balance_url: Uri,
    templates_url: Uri,
    login: String,
    token: Secret,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.base_url)
            .field("login", &self.login)
            .field("token", &self.token)
            .field("timeout", &self.http.timeout())
            .finish()
    }
}

impl Client {
    /// A client for the account in the config; errors when the login or token is missing.
    pub fn new(config: &ProviderConfig) -> Result<Client, ProviderError> {
        let login = config
            .login
            .clone()
            .filter(|l| !l.trim().is_empty())
            .ok_or(ProviderError::MissingCredentials {
                what: "login",
                env: "RECUERDA_PROVIDER_LOGIN",
            })?;
        let token = config
            .token
            .clone()
            .filter(|t| !t.expose().trim().is_empty())
            .ok_or(ProviderError::MissingCredentials {
                what: "token",
                env: "RECUERDA_PROVIDER_TOKEN",
            })?;
        Client::from_parts(
            &config.base_url,
            login,
            token,
            config.connect_timeout,
            config.timeout,
        )
    }

    /// A client from explicit parts (tests, the simulator's checks), through the proxy the
    /// environment names for `base_url`, if any. `base_url` has no trailing slash needed; one
    /// is tolerated.
    pub fn from_parts(
        base_url: &str,
        login: impl Into<String>,
        token: Secret,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<Client, ProviderError> {
        let route = Route::from_env(&call_uri(base_url, Call::Send)?)?;
        if let Route::Tunnel { proxy, .. } = &route {
            tracing::info!(%proxy, "provider calls go through the proxy the environment names");
        }
        Client::routed(base_url, login, token, connect_timeout, timeout, &route)
    }

    /// A client whose calls take `route`.
    pub fn routed(
        base_url: &str,
        login: impl Into<String>,
        token: Secret,
        connect_timeout: Duration,
        timeout: Duration,
        route: &Route,
    ) -> Result<Client, ProviderError> {
        let base_url = base_url.trim().trim_end_matches('/').to_string();
        // A send has no idempotency key: whether to try again is the engine's decision, made
        // from `ProviderError::disposition`, never the transport's, which neither retries nor
        // follows redirects (a redirected POST would turn into a GET without its body; a
        // redirect here means a wrong `base_url`, which the error says rather than hides).
        let http = Transport::new(route, connect_timeout, timeout)?;
        Ok(Client {
            http,
            send_url: call_uri(&base_url, Call::Send)?,
            balance_url: call_uri(&base_url, Call::Balance)?,
            templates_url: call_uri(&base_url, Call::Templates)?,
            base_url,
            login: login.into(),
            token,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Sends one template message; on success, the provider's `messageId`.
    ///
    /// Failures say through [`ProviderError::disposition`] whether the message provably was
    /// not sent (retry), was refused (and why), or may have been sent (unknown).
    pub async fn send(&self, req: &SendRequest) -> Result<MessageId, ProviderError> {
        let template = req.template.to_string();
        let variables = req.variables.to_wire();
        let mut fields = vec![
            ("login", self.login.as_str()),
            ("token", self.token.expose()),
            ("id_template", template.as_str()),
            ("mobile", req.mobile.as_str()),
        ];
        if let Some(variables) = &variables {
            fields.push(("template_variables", variables));
        }
        if let Some(media) = &req.media {
            fields.push(("media", media.as_str()));
        }
        if let Some(custom_field) = &req.custom_field {
            fields.push(("custom_field", custom_field.as_str()));
        }
        tracing::debug!(template = %req.template, mobile = %req.mobile.masked(), "provider send");
        let form = super::multipart::form(&fields);
        let (status, body) = self
            .exchange(Call::Send, &self.send_url, &form.content_type, form.body)
            .await?;
        let value = self.json(Call::Send, status, &body)?;
        match code_of(&value) {
            Some(1) => {
                let id = value
                    .get("messageId")
                    .and_then(scalar_text)
                    .and_then(|text| MessageId::parse(&text).ok());
                id.ok_or_else(|| {
                    self.unexpected(Call::Send, status, &body, "code 1 without a `messageId`")
                })
            }
            Some(code) => Err(match ProviderCode::from_code(code) {
                Some(code) => ProviderError::Refused(code),
                None => self.unexpected(
                    Call::Send,
                    status,
                    &body,
                    &format!("undocumented code {code}"),
                ),
            }),
            None => Err(self.unexpected(Call::Send, status, &body, "no `code` field")),
        }
    }

    /// The account's balance (the provider sends it as a string; a number is accepted too).
    pub async fn balance(&self) -> Result<i64, ProviderError> {
        let (status, body) = self.post_form(Call::Balance, &self.balance_url).await?;
        let value = self.json(Call::Balance, status, &body)?;
        match code_of(&value) {
            Some(code @ (2 | 3)) => {
                if let Some(code) = ProviderCode::from_code(code) {
                    return Err(ProviderError::Refused(code));
                }
            }
            Some(1) | None => {}
            Some(code) => {
                return Err(self.unexpected(
                    Call::Balance,
                    status,
                    &body,
                    &format!("undocumented code {code}"),
                ))
            }
        }
        value
            .get("balance")
            .and_then(parse_balance)
            .ok_or_else(|| self.unexpected(Call::Balance, status, &body, "no numeric `balance`"))
    }

    /// The account's templates (approved, pending or rejected). Code 4 ("no approved
    /// templates") is an empty list, not an error.
    pub async fn templates(&self) -> Result<Vec<RemoteTemplate>, ProviderError> {
        let (status, body) = self.post_form(Call::Templates, &self.templates_url).await?;
        let value = self.json(Call::Templates, status, &body)?;
        let items = match &value {
            Value::Array(items) => items,
            Value::Object(_) => {
                return match code_of(&value) {
                    Some(4) => Ok(Vec::new()),
                    Some(code @ (2 | 3)) => match ProviderCode::from_code(code) {
                        Some(code) => Err(ProviderError::Refused(code)),
                        None => Err(self.unexpected(Call::Templates, status, &body, "bad code")),
                    },
                    _ => Err(self.unexpected(
                        Call::Templates,
                        status,
                        &body,
                        "an object where a list of templates was expected",
                    )),
                }
            }
            _ => {
                return Err(self.unexpected(
                    Call::Templates,
                    status,
                    &body,
                    "not a list of templates",
                ))
            }
        };
        let mut templates = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            match remote_template(item) {
                Some(t) => templates.push(t),
                None => tracing::warn!(
                    index,
                    "provider listed a template without `nombre_plantilla` or `plantilla_aprobada`; skipped"
                ),
            }
        }
        Ok(templates)
    }

    /// POSTs the account's credentials as a url-encoded form (the `balance` and `templates`
    /// calls take nothing else).
    async fn post_form(
        &self,
        call: Call,
        url: &Uri,
    ) -> Result<(StatusCode, bytes::Bytes), ProviderError> {
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("login", &self.login)
            .append_pair("token", self.token.expose())
            .finish();
        self.exchange(
            call,
            url,
            "application/x-www-form-urlencoded",
            body.into_bytes(),
        )
        .await
    }

    fn secrets(&self) -> [&str; 2] {
        [self.token.expose(), &self.login]
    }

    /// Performs the request and reads the whole answer, sorting transport failures and
    /// retryable statuses into their errors.
    async fn exchange(
        &self,
        call: Call,
        url: &Uri,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<(StatusCode, bytes::Bytes), ProviderError> {
        let content_type =
            HeaderValue::from_str(content_type).map_err(|_| ProviderError::NotSent {
                call,
                detail: format!("`{content_type}` is not a valid content type"),
            })?;
        let (status, body) = self
            .http
            .post(url, content_type, body)
            .await
            .map_err(|failure| self.transport(call, failure))?;
        tracing::debug!(
            call = call.path(),
            status = status.as_u16(),
            "provider answered"
        );
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            return Err(ProviderError::Unavailable {
                call,
                status: status.as_u16(),
                excerpt: excerpt(&body, &self.secrets()),
            });
        }
        Ok((status, body))
    }

    fn json(&self, call: Call, status: StatusCode, body: &[u8]) -> Result<Value, ProviderError> {
        if status.is_redirection() {
            return Err(self.unexpected(
                call,
                status,
                body,
                "a redirect: check `provider.base_url` (no trailing slash, the API's path included)",
            ));
        }
        serde_json::from_slice(body).map_err(|_| self.unexpected(call, status, body, "not JSON"))
    }

    fn unexpected(
        &self,
        call: Call,
        status: StatusCode,
        body: &[u8],
        reason: &str,
    ) -> ProviderError {
        ProviderError::UnexpectedAnswer {
            call,
            status: status.as_u16(),
            reason: reason.to_string(),
            excerpt: excerpt(body, &self.secrets()),
            consequence: match call {
                Call::Send => {
                    "; the message may or may not have been sent, it is not re-sent automatically"
                }
                Call::Balance | Call::Templates => "",
            },
        }
    }

    /// A transport failure as the call's error, its text without the token. No connection
    /// means no byte of the request left; anything else may have reached the provider.
    fn transport(&self, call: Call, failure: Failure) -> ProviderError {
        match failure {
            Failure::NotSent(detail) => ProviderError::NotSent {
                call,
                detail: excerpt(detail.as_bytes(), &self.secrets()),
            },
            Failure::TimedOut => ProviderError::Timeout {
                call,
                timeout: self.http.timeout(),
                consequence: consequence(call),
            },
            Failure::Interrupted(detail) => ProviderError::Interrupted {
                call,
                detail: excerpt(detail.as_bytes(), &self.secrets()),
                consequence: consequence(call),
            },
        }
    }
}

/// The URL of `call` under `base_url`, checked: `http(s)://` with a host.
fn call_uri(base_url: &str, call: Call) -> Result<Uri, ProviderError> {
    let base_url = base_url.trim().trim_end_matches('/');
    let refuse = |reason: String| ProviderError::BaseUrl {
        base_url: base_url.to_string(),
        reason,
    };
    let parsed = Url::parse(base_url).map_err(|e| refuse(e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(refuse(
            "it must start with `https://` (or `http://` for a local simulator)".into(),
        ));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(ProviderError::BaseUrl {
            base_url: format!(
                "{}://***@{}",
                parsed.scheme(),
                &base_url[base_url.rfind('@').map_or(0, |at| at + 1)..]
            ),
            reason: "it carries a user and password; the provider authenticates with \
                     `provider.login` and `provider.token`, so remove the `user:password@`"
                .into(),
        });
    }
    // `Url` normalizes (an IDN host, a default port); hyper wants the normalized text.
    let mut text = parsed.as_str().trim_end_matches('/').to_string();
    text.push_str(call.path());
    text.parse::<Uri>().map_err(|e| refuse(e.to_string()))
}

/// `code` as a number or a numeric string.
fn code_of(value: &Value) -> Option<u32> {
    match value.get("code")? {
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A string, or a number written as text.
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn parse_balance(value: &Value) -> Option<i64> {
    let text = scalar_text(value)?;
    let text = text.trim();
    text.parse::<i64>().ok().or_else(|| {
        // A decimal balance ("163.50") counts its whole units: what can still be spent.
        text.parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(|f| f.floor() as i64)
    })
}

fn remote_template(item: &Value) -> Option<RemoteTemplate> {
    let text = |keys: &[&str]| keys.iter().find_map(|k| item.get(*k).and_then(scalar_text));
    let name = text(&["nombre_plantilla", "nombre", "name"]);
    let body = text(&["plantilla_aprobada", "plantilla", "body"]);
    if name.is_none() && body.is_none() {
        return None;
    }
    let body = body.unwrap_or_default();
    let id = text(&["id_template", "id"]).and_then(|s| s.trim().parse().ok());
    Some(RemoteTemplate {
        id,
        name: name.unwrap_or_default(),
        placeholders: count_placeholders(&body),
        body,
        status: text(&["status"]).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balance_accepts_strings_numbers_and_decimals() {
        assert_eq!(parse_balance(&Value::from("163")), Some(163));
        assert_eq!(parse_balance(&Value::from(163)), Some(163));
        assert_eq!(parse_balance(&Value::from("163.75")), Some(163));
        assert_eq!(parse_balance(&Value::from("mucho")), None);
    }
}
