//! How a provider call can fail, and what the engine must do about each failure: the
//! provider's result codes, transport failures, and the [`Disposition`] that keeps apart
//! "retry", "pause", "stop", "fail this message" and "outcome unknown".

use std::fmt;
use std::time::Duration;

/// Which call failed; it decides what an ambiguous failure means (a `send` has side effects,
/// `balance` and `templates` do not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Call {
    Send,
    Balance,
    Templates,
}

impl Call {
    /// The path under `provider.base_url`.
    pub fn path(self) -> &'static str {
        match self {
            Call::Send => "/send/",
            Call::Balance => "/balance/",
            Call::Templates => "/template/",
        }
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`", self.path())
    }
}

/// What the engine does with a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Disposition {
    /// The request provably did not take effect (it never left, or the provider answered
    /// 429/5xx): try again with backoff.
    Retry,
    /// Code 5: no balance. Hold all sends until `balance` shows credit again.
    PauseForBalance,
    /// Codes 2/3: the account or credentials are wrong. Nothing will succeed until ops fix the
    /// configuration: stop sending and alert.
    StopSending,
    /// Codes 4/6/7/8: this message is wrong; others may go.
    FailMessage,
    /// The request left and no usable answer came back: the message may or may not have been
    /// sent. The provider has no idempotency key, so this must not be retried blindly.
    Unknown,
}

/// The kind of problem a refusal code points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CodeClass {
    /// Credentials or account setup (2, 3).
    Configuration,
    /// No balance (5).
    Balance,
    /// The message's own data (4, 6).
    MessageData,
    /// The rule or template file (7, 8).
    Rule,
}

/// A refusal code from the provider (2–8; 1 is success).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderCode {
    /// 2
    Authentication,
    /// 3
    NoChatbot,
    /// 4
    BadMobile,
    /// 5
    NoBalance,
    /// 6
    EmptyMessage,
    /// 7
    TemplateNotInProject,
    /// 8
    VariableCount,
}

impl ProviderCode {
    /// `None` for codes outside 2..=8 (1 is success, not a refusal).
    pub fn from_code(code: u32) -> Option<ProviderCode> {
        Some(match code {
            2 => ProviderCode::Authentication,
            3 => ProviderCode::NoChatbot,
            4 => ProviderCode::BadMobile,
            5 => ProviderCode::NoBalance,
            6 => ProviderCode::EmptyMessage,
            7 => ProviderCode::TemplateNotInProject,
            8 => ProviderCode::VariableCount,
            _ => return None,
        })
    }

    pub fn code(self) -> u32 {
        match self {
            ProviderCode::Authentication => 2,
            ProviderCode::NoChatbot => 3,
            ProviderCode::BadMobile => 4,
            ProviderCode::NoBalance => 5,
            ProviderCode::EmptyMessage => 6,
            ProviderCode::TemplateNotInProject => 7,
            ProviderCode::VariableCount => 8,
        }
    }

    /// The provider's own name for the code (its documentation's "Concepto").
    pub fn concept(self) -> &'static str {
        match self {
            ProviderCode::Authentication => "authentication error",
            ProviderCode::NoChatbot => "user without multiagent/chatbot",
            ProviderCode::BadMobile => "error in the cell phone number to send",
            ProviderCode::NoBalance => "no balance or inactive chatbot/multiagent",
            ProviderCode::EmptyMessage => "empty message",
            ProviderCode::TemplateNotInProject => "id_template does not correspond to the project",
            ProviderCode::VariableCount => "the number of variables received does not correspond to the number of variables created in the template",
        }
    }

    /// What was refused, in the words of the error line.
    fn refused(self) -> &'static str {
        match self {
            ProviderCode::Authentication => "provider refused the login",
            ProviderCode::NoChatbot => "provider account has no chatbot or multiagent assigned",
            ProviderCode::BadMobile => "provider refused the mobile number",
            ProviderCode::NoBalance => "provider account has no balance or an inactive chatbot",
            ProviderCode::EmptyMessage => "provider says the message arrived empty",
            ProviderCode::TemplateNotInProject => {
                "provider says the template id does not belong to this account"
            }
            ProviderCode::VariableCount => {
                "provider says the variable count does not match the template's placeholders"
            }
        }
    }

    /// What to do about it.
    pub fn action(self) -> &'static str {
        match self {
            ProviderCode::Authentication => "check `provider.login` and `provider.token`",
            ProviderCode::NoChatbot => "ask contacto-virtual support to assign a chatbot or multiagent to this login",
            ProviderCode::BadMobile => "the mobile must be Colombian: 57 followed by 10 digits starting with 3",
            ProviderCode::NoBalance => "top up the balance; the engine holds sends until it is back",
            ProviderCode::EmptyMessage => "check that the template and its variables are not empty",
            ProviderCode::TemplateNotInProject => "fix the template id in the rule or template file (`recuerda templates` lists this account's templates)",
            ProviderCode::VariableCount => "give the rule exactly one variable per `{n}` placeholder in the template (`recuerda templates` shows the counts)",
        }
    }

    pub fn class(self) -> CodeClass {
        match self {
            ProviderCode::Authentication | ProviderCode::NoChatbot => CodeClass::Configuration,
            ProviderCode::NoBalance => CodeClass::Balance,
            ProviderCode::BadMobile | ProviderCode::EmptyMessage => CodeClass::MessageData,
            ProviderCode::TemplateNotInProject | ProviderCode::VariableCount => CodeClass::Rule,
        }
    }

    pub fn disposition(self) -> Disposition {
        match self.class() {
            CodeClass::Configuration => Disposition::StopSending,
            CodeClass::Balance => Disposition::PauseForBalance,
            CodeClass::MessageData | CodeClass::Rule => Disposition::FailMessage,
        }
    }
}

impl fmt::Display for ProviderCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (code {}): {}",
            self.refused(),
            self.code(),
            self.action()
        )
    }
}

/// A failed provider call. No variant ever holds the token: answers are quoted through a
/// scrubbed, shortened excerpt.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error(
        "no provider {what}: set `provider.{what}` in recuerda.yaml or `{env}` in the environment"
    )]
    MissingCredentials {
        what: &'static str,
        env: &'static str,
    },
    #[error("`provider.base_url` `{base_url}` is not usable: {reason}")]
    BaseUrl { base_url: String, reason: String },
    #[error("cannot build the HTTP client: {0}")]
    Build(#[from] super::transport::BuildError),
    #[error(transparent)]
    Proxy(#[from] super::transport::ProxyError),
    #[error("{0}")]
    Refused(ProviderCode),
    /// The request never reached the provider (connection refused, DNS, TLS handshake).
    #[error("could not reach the provider for {call}, nothing was sent: {detail}")]
    NotSent { call: Call, detail: String },
    #[error("provider timed out on {call} after {timeout:?}: {consequence}")]
    Timeout {
        call: Call,
        timeout: Duration,
        consequence: &'static str,
    },
    #[error("connection to the provider broke during {call}: {detail}; {consequence}")]
    Interrupted {
        call: Call,
        detail: String,
        consequence: &'static str,
    },
    #[error("provider answered {call} with HTTP {status}, a temporary failure (safe to try again): `{excerpt}`")]
    Unavailable {
        call: Call,
        status: u16,
        excerpt: String,
    },
    #[error("provider gave an unexpected answer to {call} (HTTP {status}, {reason}): `{excerpt}`{consequence}")]
    UnexpectedAnswer {
        call: Call,
        status: u16,
        reason: String,
        excerpt: String,
        consequence: &'static str,
    },
}

impl ProviderError {
    /// What the engine should do with the call that failed.
    ///
    /// For `send`, anything after the request may have left (a timeout, a broken connection, an
    /// answer that is not one of the documented ones) is [`Disposition::Unknown`]. `balance` and
    /// `templates` have no side effects, so their transport failures are [`Disposition::Retry`].
    pub fn disposition(&self) -> Disposition {
        match self {
            ProviderError::MissingCredentials { .. }
            | ProviderError::BaseUrl { .. }
            | ProviderError::Build(_)
            | ProviderError::Proxy(_) => Disposition::StopSending,
            ProviderError::Refused(code) => code.disposition(),
            ProviderError::NotSent { .. } | ProviderError::Unavailable { .. } => Disposition::Retry,
            ProviderError::Timeout { call, .. }
            | ProviderError::Interrupted { call, .. }
            | ProviderError::UnexpectedAnswer { call, .. } => match call {
                Call::Send => Disposition::Unknown,
                Call::Balance | Call::Templates => Disposition::Retry,
            },
        }
    }

    /// The refusal code, when the provider answered with one.
    pub fn code(&self) -> Option<ProviderCode> {
        match self {
            ProviderError::Refused(code) => Some(*code),
            _ => None,
        }
    }
}

/// What an ambiguous failure means for the call, appended to its message.
pub(crate) fn consequence(call: Call) -> &'static str {
    match call {
        Call::Send => "the message may or may not have been sent; it is not re-sent automatically",
        Call::Balance | Call::Templates => "nothing changed on the provider; try again",
    }
}

/// The meaning of a webhook `failed` event's code (1002–1011): the message was accepted but
/// did not reach WhatsApp. `None` for codes the provider does not document.
pub fn failure_reason(code: u32) -> Option<&'static str> {
    Some(match code {
        1002 => "number not active on WhatsApp",
        1003 => "cannot send: check the wallet balance",
        1004 => "user inactive for session messages and template messaging is disabled",
        1005 => "the template did not match",
        1006 => "user inactive for session messages and has not opted in to template messages",
        1007 => "user inactive for session messages, has not opted in to template messages, and the template did not match",
        1008 => "a mandatory template parameter is missing",
        1010 => "invalid media URL",
        1011 => "invalid message size",
        _ => return None,
    })
}

/// At most this many characters of an answer are quoted in an error.
pub const EXCERPT_CHARS: usize = 200;

/// A short, single-line quote of what came back, with every `secrets` occurrence replaced by
/// `***` (the provider may echo the login or token).
pub(crate) fn excerpt(body: &[u8], secrets: &[&str]) -> String {
    let mut text = String::from_utf8_lossy(body).into_owned();
    // Very short values would blank out ordinary text; real logins and tokens are longer.
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        text = text.replace(secret, "***");
    }
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.is_empty() {
        return "<empty body>".to_string();
    }
    if one_line.chars().count() <= EXCERPT_CHARS {
        return one_line;
    }
    let mut short: String = one_line.chars().take(EXCERPT_CHARS - 1).collect();
    short.push('…');
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_2_reads_as_documented() {
        assert_eq!(
            ProviderError::Refused(ProviderCode::Authentication).to_string(),
            "provider refused the login (code 2): check `provider.login` and `provider.token`"
        );
    }

    #[test]
    fn excerpt_is_short_single_line_and_scrubbed() {
        let body = format!("<html>\n  token=abc123 {}</html>", "x".repeat(500));
        let e = excerpt(body.as_bytes(), &["abc123"]);
        assert!(!e.contains("abc123"));
        assert!(e.contains("token=***"));
        assert!(e.chars().count() <= EXCERPT_CHARS);
        assert!(!e.contains('\n'));
        assert_eq!(excerpt(b"short", &[]), "short");
        assert_eq!(excerpt(b"  ", &[]), "<empty body>");
    }
}
