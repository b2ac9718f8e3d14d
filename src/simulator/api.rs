//! The provider's three endpoints (`send`, `balance`, `template`) with its fields, checks, codes
//! and JSON answers, plus the fault injection that bends `send` answers.
//!
//! `send` checks, in this order, answering the first that fails:
//! 1. code 2: `login`/`token` match no account;
//! 2. code 3: the account has no chatbot;
//! 3. code 4: `mobile` is not exactly 12 digits starting with `57`;
//! 4. code 5: the balance is zero;
//! 5. code 6 ("empty message"): `id_template` is missing or blank — no message was chosen;
//! 6. code 7: `id_template` is not a number, not a template of this account, or not approved;
//! 7. code 6: the template has placeholders but `template_variables` is missing or blank;
//! 8. code 8: `template_variables` is not a list of `[value]`s, or their count differs from the
//!    body's distinct placeholders;
//! 9. code 6: the body with the variables put in is blank (e.g. template `{1}` sent `[ ]`).
//!
//! Then the send is accepted (code 1), one unit is debited and its callbacks are scheduled.
//! Every endpoint reads `multipart/form-data` or `application/x-www-form-urlencoded`
//! (and a body with any other content type as urlencoded), as a lenient PHP backend would.

use super::config::{is_valid_mobile, placeholder_count, TemplateStatus};
use super::conn::ConnControl;
use super::state::{Endpoint, Fault, RequestRecord, SendRecord, SimState};
use super::{webhook, Shared};
use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequest, Multipart, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use chrono::Utc;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Where the provider's API lives on its host.
pub const PREFIX: &str = "/bot/chat_wa/ws";

/// Largest body read: sends are small forms.
pub(crate) const BODY_LIMIT: usize = 1024 * 1024;

pub(crate) fn router() -> Router<Arc<Shared>> {
    let mut router = Router::new();
    // The documented paths end in `/`; clients that drop it are served too.
    for path in ["send/", "send"] {
        router = router.route(&format!("{PREFIX}/{path}"), post(send));
    }
    for path in ["balance/", "balance"] {
        router = router.route(&format!("{PREFIX}/{path}"), post(balance));
    }
    for path in ["template/", "template"] {
        router = router.route(&format!("{PREFIX}/{path}"), post(templates));
    }
    router
}

/// The provider's word for each result code.
pub fn concept(code: u8) -> &'static str {
    match code {
        1 => "mensaje enviado",
        2 => "error de autenticación",
        3 => "usuario sin multiagente/chatbot",
        4 => "error en el número de celular",
        5 => "sin saldo o chatbot/multiagente inactivo",
        6 => "mensaje vacío",
        7 => "id_template no corresponde al proyecto",
        8 => "la cantidad de variables no corresponde a la plantilla",
        _ => "error desconocido",
    }
}

/// The provider's answers, as structs so the keys keep the provider's order on the wire.
#[derive(Serialize)]
struct CodeAnswer<'a> {
    code: u8,
    status: &'a str,
    #[serde(rename = "messageId", skip_serializing_if = "Option::is_none")]
    message_id: Option<&'a str>,
}

#[derive(Serialize)]
struct BalanceAnswer {
    balance: String,
    status: &'static str,
}

#[derive(Serialize)]
struct ListedTemplate {
    nombre_plantilla: String,
    plantilla_aprobada: String,
    status: &'static str,
    /// Not in the provider's document (PROVIDER.md §3 says to parse it tolerantly).
    id_template: u32,
    /// WhatsApp's verdict on the template; also beyond the document.
    estado: TemplateStatus,
}

/// `{"code": N, "status": …}` with HTTP 200, as the provider answers every refusal.
fn code_answer(code: u8) -> Response {
    Json(CodeAnswer {
        code,
        status: concept(code),
        message_id: None,
    })
    .into_response()
}

/// A request body's fields, however they were encoded.
struct Form {
    content_type: Option<String>,
    fields: BTreeMap<String, String>,
    body_error: Option<String>,
}

impl Form {
    fn get(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }

    /// The fields for a record: the token masked.
    fn masked(&self) -> BTreeMap<String, String> {
        let mut fields = self.fields.clone();
        if let Some(token) = fields.get_mut("token") {
            *token = "***".into();
        }
        fields
    }
}

/// Reads the body as a form. An unreadable body gives the fields read so far (maybe none), as
/// a PHP backend's `$_POST` would, and the answer then follows from what is missing.
async fn read_form(request: Request) -> Form {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut fields = BTreeMap::new();
    let mut body_error = None;
    let is_multipart = content_type
        .as_deref()
        .is_some_and(|ct| ct.to_ascii_lowercase().starts_with("multipart/form-data"));
    if is_multipart {
        match Multipart::from_request(request, &()).await {
            Ok(mut multipart) => loop {
                match multipart.next_field().await {
                    Ok(Some(field)) => {
                        let name = field.name().unwrap_or_default().to_owned();
                        let value = match field.file_name().map(str::to_owned) {
                            Some(file) => field
                                .bytes()
                                .await
                                .map(|b| format!("<file `{file}`, {} bytes>", b.len())),
                            None => field.text().await,
                        };
                        match value {
                            Ok(value) => {
                                fields.insert(name, value);
                            }
                            Err(e) => {
                                body_error = Some(e.body_text());
                                break;
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        body_error = Some(e.body_text());
                        break;
                    }
                }
            },
            Err(e) => body_error = Some(e.body_text()),
        }
    } else {
        match axum::body::to_bytes(request.into_body(), BODY_LIMIT).await {
            Ok(bytes) => fields.extend(form_urlencoded::parse(&bytes).into_owned()),
            Err(e) => body_error = Some(e.to_string()),
        }
    }
    Form {
        content_type,
        fields,
        body_error,
    }
}

/// Finds the account the credentials open: its index, else code 2 (unknown) or 3 (no chatbot).
fn authenticate(state: &SimState, form: &Form) -> Result<usize, u8> {
    let login = form.get("login").unwrap_or("");
    let token = form.get("token").unwrap_or("");
    let index = state
        .config
        .accounts
        .iter()
        .position(|a| a.login == login && a.token.matches(token))
        .ok_or(2u8)?;
    if state.config.accounts[index].chatbot {
        Ok(index)
    } else {
        Err(3)
    }
}

/// `[a] [b] [c]` → `a`, `b`, `c`; `None` for anything else (text outside brackets, a bracket
/// inside a value, an unclosed bracket). Blank text is an empty list.
pub fn parse_variables(text: &str) -> Option<Vec<String>> {
    let mut variables = Vec::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '[' => {
                let mut value = String::new();
                loop {
                    match chars.next()? {
                        ']' => break,
                        '[' => return None,
                        c => value.push(c),
                    }
                }
                variables.push(value);
            }
            _ => return None,
        }
    }
    Some(variables)
}

/// Puts variable `n` in place of `{n}`; a placeholder without a variable stays as written.
fn render(body: &str, variables: &[String]) -> String {
    let mut text = body.to_owned();
    for (i, value) in variables.iter().enumerate() {
        text = text.replace(&format!("{{{}}}", i + 1), value);
    }
    text
}

/// Applies the provider's checks and, on success, debits, records the send and plans its
/// callbacks. Runs under the state lock.
fn decide_send(
    state: &mut SimState,
    form: &Form,
) -> Result<(SendRecord, Vec<(std::time::Duration, webhook::Step)>), u8> {
    let index = authenticate(state, form)?;
    let mobile = form.get("mobile").unwrap_or("");
    if !is_valid_mobile(mobile) {
        return Err(4);
    }
    if state.config.accounts[index].balance == 0 {
        return Err(5);
    }
    let id_text = form.get("id_template").unwrap_or("").trim();
    if id_text.is_empty() {
        return Err(6);
    }
    let account = &state.config.accounts[index];
    let template = id_text
        .parse::<u32>()
        .ok()
        .and_then(|id| {
            state
                .config
                .templates_of(account)
                .into_iter()
                .find(|t| t.id == id)
        })
        .filter(|t| t.status == TemplateStatus::Aprobada)
        .ok_or(7u8)?;
    let (template_id, body) = (template.id, template.body.clone());
    let needed = placeholder_count(&body);
    let variables_text = form.get("template_variables").unwrap_or("");
    if needed > 0 && variables_text.trim().is_empty() {
        return Err(6);
    }
    let variables = parse_variables(variables_text).ok_or(8u8)?;
    if variables.len() != needed {
        return Err(8);
    }
    let text = render(&body, &variables);
    if text.trim().is_empty() {
        return Err(6);
    }

    let account = &mut state.config.accounts[index];
    account.balance -= 1;
    let non_blank = |name: &str| form.get(name).filter(|v| !v.is_empty()).map(str::to_owned);
    let send = SendRecord {
        at: Utc::now(),
        message_id: uuid::Uuid::new_v4().to_string(),
        whatsapp_id: webhook::new_whatsapp_id(),
        login: account.login.clone(),
        template_id,
        mobile: mobile.to_owned(),
        variables,
        text,
        media: non_blank("media"),
        custom_field: non_blank("custom_field"),
    };
    let steps = webhook::plan(state, &send);
    state.sends.push(send.clone());
    Ok((send, steps))
}

/// Decides a send and, when accepted, starts its callbacks: `Ok(message_id)` or the code.
fn process_send(shared: &Arc<Shared>, form: &Form) -> Result<String, u8> {
    let decided = decide_send(&mut shared.lock(), form);
    decided.map(|(send, steps)| {
        let message_id = send.message_id.clone();
        webhook::schedule(shared, send, steps);
        message_id
    })
}

fn success_answer(message_id: &str) -> Response {
    Json(CodeAnswer {
        code: 1,
        status: concept(1),
        message_id: Some(message_id),
    })
    .into_response()
}

/// What a request record needs beyond the form.
struct Outcome {
    code: Option<u8>,
    http_status: Option<u16>,
    fault: Option<String>,
    message_id: Option<String>,
}

fn record(shared: &Shared, endpoint: Endpoint, form: &Form, outcome: Outcome) {
    let path = match endpoint {
        Endpoint::Send => "send",
        Endpoint::Balance => "balance",
        Endpoint::Template => "template",
    };
    let answer = match (&outcome.fault, outcome.code, outcome.http_status) {
        (Some(fault), _, _) => format!("fault {fault}"),
        (None, Some(code), _) => format!("code {code}"),
        (None, None, Some(200)) => "ok".into(),
        (None, None, Some(status)) => format!("HTTP {status}"),
        (None, None, None) => "no answer".into(),
    };
    let login = form.get("login").unwrap_or("-");
    let details = match endpoint {
        Endpoint::Send => format!(
            " mobile={} template={}",
            form.get("mobile").unwrap_or("-"),
            form.get("id_template").unwrap_or("-")
        ),
        Endpoint::Balance | Endpoint::Template => String::new(),
    };
    let message_id = outcome
        .message_id
        .as_deref()
        .map(|id| format!(" messageId={id}"))
        .unwrap_or_default();
    tracing::info!("POST /{path}/ login={login}{details} → {answer}{message_id}");
    shared.lock().requests.push(RequestRecord {
        at: Utc::now(),
        endpoint,
        content_type: form.content_type.clone(),
        fields: form.masked(),
        code: outcome.code,
        http_status: outcome.http_status,
        fault: outcome.fault,
        message_id: outcome.message_id,
        body_error: form.body_error.clone(),
    });
}

async fn send(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnControl>,
    request: Request,
) -> Response {
    let form = read_form(request).await;
    let fault = shared.lock().faults.pop_front();
    let Some(fault) = fault else {
        let result = process_send(&shared, &form);
        let (code, message_id) = match &result {
            Ok(id) => (1, Some(id.clone())),
            Err(code) => (*code, None),
        };
        let outcome = Outcome {
            code: Some(code),
            http_status: Some(200),
            fault: None,
            message_id,
        };
        record(&shared, Endpoint::Send, &form, outcome);
        return match result {
            Ok(id) => success_answer(&id),
            Err(code) => code_answer(code),
        };
    };
    let label = Some(fault.label());
    match fault {
        Fault::HttpStatus {
            status,
            body,
            retry_after,
        } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let outcome = Outcome {
                code: None,
                http_status: Some(status.as_u16()),
                fault: label,
                message_id: None,
            };
            record(&shared, Endpoint::Send, &form, outcome);
            let mut response = (status, body).into_response();
            if let Some(seconds) = retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            }
            response
        }
        Fault::Garbage => {
            let outcome = Outcome {
                code: None,
                http_status: Some(200),
                fault: label,
                message_id: None,
            };
            record(&shared, Endpoint::Send, &form, outcome);
            let page = "<!DOCTYPE html><html><head><title>Error</title></head><body>\
                        <h1>Service Temporarily Unavailable</h1><p>Warning: mysqli_connect(): \
                        Too many connections in /var/www/html/ws/send.php on line 12</p>\
                        </body></html>";
            (
                [(header::CONTENT_TYPE, "text/html; charset=UTF-8")],
                Body::from(page),
            )
                .into_response()
        }
        Fault::Code { code } => {
            let message_id = (code == 1).then(|| uuid::Uuid::new_v4().to_string());
            let outcome = Outcome {
                code: Some(code),
                http_status: Some(200),
                fault: label,
                message_id: message_id.clone(),
            };
            record(&shared, Endpoint::Send, &form, outcome);
            match message_id {
                Some(id) => success_answer(&id),
                None => code_answer(code),
            }
        }
        Fault::Drop { accepted } | Fault::Hang { accepted, .. } => {
            let wait = match fault {
                Fault::Hang { duration, .. } => Some(duration),
                _ => None,
            };
            let (code, message_id) = if accepted {
                match process_send(&shared, &form) {
                    Ok(id) => (Some(1), Some(id)),
                    Err(code) => (Some(code), None),
                }
            } else {
                (None, None)
            };
            let outcome = Outcome {
                code,
                http_status: None,
                fault: label,
                message_id,
            };
            record(&shared, Endpoint::Send, &form, outcome);
            if let Some(duration) = wait {
                let mut shutdown = shared.shutdown.subscribe();
                tokio::select! {
                    _ = tokio::time::sleep(duration) => {}
                    _ = shutdown.wait_for(|stopping| *stopping) => {}
                }
            }
            conn.kill();
            // Never written: the killed connection fails before hyper writes a byte.
            StatusCode::OK.into_response()
        }
    }
}

async fn balance(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let form = read_form(request).await;
    let result = {
        let state = shared.lock();
        authenticate(&state, &form).map(|i| state.config.accounts[i].balance)
    };
    let code = result.err();
    let outcome = Outcome {
        code,
        http_status: Some(200),
        fault: None,
        message_id: None,
    };
    record(&shared, Endpoint::Balance, &form, outcome);
    match result {
        Ok(balance) => Json(BalanceAnswer {
            balance: balance.to_string(),
            status: "success",
        })
        .into_response(),
        Err(code) => code_answer(code),
    }
}

async fn templates(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let form = read_form(request).await;
    let result = {
        let state = shared.lock();
        authenticate(&state, &form).and_then(|i| {
            let listed: Vec<_> = state
                .config
                .templates_of(&state.config.accounts[i])
                .into_iter()
                .map(|t| ListedTemplate {
                    nombre_plantilla: t.name.clone(),
                    plantilla_aprobada: t.body.clone(),
                    status: "success",
                    id_template: t.id,
                    estado: t.status,
                })
                .collect();
            if listed.is_empty() {
                Err(4)
            } else {
                Ok(listed)
            }
        })
    };
    let outcome = Outcome {
        code: result.as_ref().err().copied(),
        http_status: Some(200),
        fault: None,
        message_id: None,
    };
    record(&shared, Endpoint::Template, &form, outcome);
    match result {
        Ok(listed) => Json(listed).into_response(),
        Err(4) => Json(CodeAnswer {
            code: 4,
            status: "sin plantillas aprobadas",
            message_id: None,
        })
        .into_response(),
        Err(code) => code_answer(code),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bracketed_variables() {
        let check = |text: &str, expected: Option<&[&str]>| {
            let expected = expected.map(|v| v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            assert_eq!(parse_variables(text), expected, "{text:?}");
        };
        check(
            "[Carlos] [$100] [miércoles]",
            Some(&["Carlos", "$100", "miércoles"]),
        );
        check("[a][b]", Some(&["a", "b"]));
        check("", Some(&[]));
        check("  ", Some(&[]));
        check("[] [ x ]", Some(&["", " x "]));
        check("Carlos", None);
        check("[a] b", None);
        check("[a", None);
        check("[a [b]]", None);
    }

    #[test]
    fn renders_numbered_placeholders() {
        let vars = vec!["Ana".to_string(), "Dr. Ruiz".to_string()];
        assert_eq!(
            render("Hola {1}, {2} y {1}", &vars),
            "Hola Ana, Dr. Ruiz y Ana"
        );
    }
}
