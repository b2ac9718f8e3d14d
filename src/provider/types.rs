//! What a send is made of — mobile, template id, variables, media, custom field — as types that
//! are valid once built, so that nothing the provider would refuse for its shape reaches it.

use reqwest::Url;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

/// The provider's limit on `custom_field`, in characters (not bytes).
pub const CUSTOM_FIELD_MAX_CHARS: usize = 1_000;

/// File kinds the provider accepts as `media` (PROVIDER.md), lowercase.
pub const MEDIA_EXTENSIONS: [&str; 11] = [
    "pdf", "jpg", "mp3", "txt", "docx", "xlsx", "zip", "mp4", "pptx", "png", "jpeg",
];

/// Everything that can make a send invalid before it reaches the provider. The engine records
/// it as "refused before any call" with this text as the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSend {
    #[error(transparent)]
    Mobile(#[from] MobileError),
    #[error(transparent)]
    TemplateId(#[from] TemplateIdError),
    #[error(transparent)]
    Variables(#[from] VariablesError),
    #[error(transparent)]
    Media(#[from] MediaUrlError),
    #[error(transparent)]
    CustomField(#[from] CustomFieldError),
    #[error(transparent)]
    MessageId(#[from] MessageIdError),
}

// ---- Mobile ---------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MobileError {
    #[error("the mobile number is empty: write a Colombian mobile such as `310 233 4455` or `573102334455`")]
    Empty,
    #[error("mobile `{input}` contains `{character}`: use only digits, spaces, `+`, `-`, `.` and parentheses")]
    InvalidCharacter { input: String, character: char },
    #[error("mobile `{input}` is a Colombian landline (60…): WhatsApp needs a mobile, which starts with 3 (`310 233 4455`)")]
    Landline { input: String },
    #[error("mobile `{input}` is not Colombian: the provider only sends to Colombian mobiles, `+57` followed by 10 digits starting with 3")]
    Foreign { input: String },
    #[error("mobile `{input}` is not a Colombian mobile: those start with 3 (`310 233 4455`, or `573102334455` with the prefix)")]
    NotMobile { input: String },
    #[error("mobile `{input}` has {digits} digits: write 10 digits starting with 3 (`3102334455`) or 12 with the country prefix (`573102334455`)")]
    WrongLength { input: String, digits: usize },
}

/// A Colombian mobile number in the provider's form: 12 digits, `57` and a national number
/// starting with `3`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mobile(String);

impl Mobile {
    /// Accepts the ways people write a Colombian mobile (`573102334455`, `+57 310 233 4455`,
    /// `310-233-4455`, `(310) 2334455`, `3102334455`, `0057…`) and refuses everything else,
    /// saying why.
    pub fn parse(input: &str) -> Result<Mobile, MobileError> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(MobileError::Empty);
        }
        let owned = || trimmed.to_string();
        let mut digits = String::with_capacity(trimmed.len());
        let mut plus = false;
        for (i, c) in trimmed.chars().enumerate() {
            match c {
                '0'..='9' => digits.push(c),
                '+' if i == 0 => plus = true,
                ' ' | '-' | '.' | '(' | ')' => {}
                _ => {
                    return Err(MobileError::InvalidCharacter {
                        input: owned(),
                        character: c,
                    })
                }
            }
        }
        // `00` is the international call prefix, the same as a leading `+`.
        let international = plus || (digits.starts_with("00") && digits.len() > 10);
        let digits = if !plus && international {
            digits[2..].to_string()
        } else {
            digits
        };
        let national = if international {
            match digits.strip_prefix("57") {
                Some(rest) => rest,
                None => return Err(MobileError::Foreign { input: owned() }),
            }
        } else if digits.len() == 12 && digits.starts_with("57") {
            &digits[2..]
        } else if digits.len() == 10 {
            &digits[..]
        } else if digits.len() >= 12 && !digits.starts_with("57") {
            return Err(MobileError::Foreign { input: owned() });
        } else {
            return Err(MobileError::WrongLength {
                input: owned(),
                digits: digits.len(),
            });
        };
        if national.starts_with("60") {
            return Err(MobileError::Landline { input: owned() });
        }
        if national.len() != 10 {
            return Err(MobileError::WrongLength {
                input: owned(),
                digits: digits.len(),
            });
        }
        if !national.starts_with('3') {
            return Err(MobileError::NotMobile { input: owned() });
        }
        Ok(Mobile(format!("57{national}")))
    }

    /// The 12 digits the provider expects (`573102334455`).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// For logs: the middle digits hidden (`57310****455`).
    pub fn masked(&self) -> String {
        mask_mobile(&self.0)
    }

    /// Normalizes the mobile a webhook reply carries, without judging it: keeps the digits only.
    /// The provider's own example has 11 digits, so a reply is never refused for its mobile.
    pub fn from_reply(raw: &str) -> String {
        raw.chars().filter(char::is_ascii_digit).collect()
    }
}

impl fmt::Display for Mobile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Mobile {
    // Debug output ends up in logs: keep the number masked there.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mobile({})", self.masked())
    }
}

impl FromStr for Mobile {
    type Err = MobileError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Mobile::parse(s)
    }
}

impl Serialize for Mobile {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Mobile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Mobile::parse(&text).map_err(serde::de::Error::custom)
    }
}

// ---- TemplateId -----------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateIdError {
    #[error("template id `{input}` is not a number: use the numeric id the provider gave the template (e.g. `990`)")]
    NotNumber { input: String },
}

/// The provider's numeric template id (`id_template`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TemplateId(pub u32);

impl TemplateId {
    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for TemplateId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for TemplateId {
    type Err = TemplateIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim()
            .parse()
            .map(TemplateId)
            .map_err(|_| TemplateIdError::NotNumber {
                input: s.to_string(),
            })
    }
}

impl From<u32> for TemplateId {
    fn from(id: u32) -> Self {
        TemplateId(id)
    }
}

// ---- MessageId ------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageIdError {
    #[error("the message id is empty: it must be the `messageId` the provider returned")]
    Empty,
}

/// The id the provider gives an accepted message (`messageId`); webhook events refer to it.
/// The provider returns UUIDs, but nothing here depends on that shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct MessageId(String);

impl MessageId {
    pub fn parse(input: &str) -> Result<MessageId, MessageIdError> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(MessageIdError::Empty);
        }
        Ok(MessageId(trimmed.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for MessageId {
    type Err = MessageIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MessageId::parse(s)
    }
}

impl<'de> Deserialize<'de> for MessageId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        MessageId::parse(&text).map_err(serde::de::Error::custom)
    }
}

// ---- CustomField ----------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CustomFieldError {
    #[error("`custom_field` is empty: leave it out, or give it a value such as `cita-{{{{appointment.id}}}}`")]
    Empty,
    #[error("`custom_field` `{start}…` has {chars} characters, over the provider's limit of 1000: shorten it (it only needs to tie replies back, e.g. `cita-<id>`)")]
    TooLong { start: String, chars: usize },
}

/// The opaque value sent with a message and returned with the patient's reply: not empty and
/// at most 1,000 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct CustomField(String);

impl CustomField {
    pub fn parse(input: &str) -> Result<CustomField, CustomFieldError> {
        if input.trim().is_empty() {
            return Err(CustomFieldError::Empty);
        }
        let chars = input.chars().count();
        if chars > CUSTOM_FIELD_MAX_CHARS {
            return Err(CustomFieldError::TooLong {
                start: input.chars().take(40).collect(),
                chars,
            });
        }
        Ok(CustomField(input.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CustomField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for CustomField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        CustomField::parse(&text).map_err(serde::de::Error::custom)
    }
}

// ---- MediaUrl -------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaUrlError {
    #[error("media `{input}` is not a URL ({reason}): give the public address of the file, e.g. `https://clinica.example/indicaciones.pdf`")]
    NotUrl { input: String, reason: String },
    #[error("media `{input}` uses `{scheme}:`: the provider downloads media over `http` or `https` only")]
    Scheme { input: String, scheme: String },
    #[error("media `{input}` has no file extension: the provider needs one of pdf, jpg, mp3, txt, docx, xlsx, zip, mp4, pptx, png, jpeg at the end of the path")]
    NoExtension { input: String },
    #[error("media `{input}` is a `.{extension}` file, which the provider refuses: use one of pdf, jpg, mp3, txt, docx, xlsx, zip, mp4, pptx, png, jpeg")]
    Extension { input: String, extension: String },
}

/// A public http(s) URL of a file of a kind the provider accepts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct MediaUrl(String);

impl MediaUrl {
    pub fn parse(input: &str) -> Result<MediaUrl, MediaUrlError> {
        let trimmed = input.trim();
        let url = Url::parse(trimmed).map_err(|e| MediaUrlError::NotUrl {
            input: trimmed.to_string(),
            reason: e.to_string(),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(MediaUrlError::Scheme {
                input: trimmed.to_string(),
                scheme: url.scheme().to_string(),
            });
        }
        // `Url::path` excludes the query string and fragment.
        let last_segment = url.path().rsplit('/').next().unwrap_or_default();
        let extension = match last_segment.rsplit_once('.') {
            Some((stem, ext)) if !stem.is_empty() && !ext.is_empty() => ext.to_ascii_lowercase(),
            _ => {
                return Err(MediaUrlError::NoExtension {
                    input: trimmed.to_string(),
                })
            }
        };
        if !MEDIA_EXTENSIONS.contains(&extension.as_str()) {
            return Err(MediaUrlError::Extension {
                input: trimmed.to_string(),
                extension,
            });
        }
        // Sent as written (not `url.as_str()`): the provider gets exactly the address ops gave.
        Ok(MediaUrl(trimmed.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MediaUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for MediaUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        MediaUrl::parse(&text).map_err(serde::de::Error::custom)
    }
}

// ---- Variables ------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VariablesError {
    #[error("variable {{{index}}} is empty: the provider refuses empty variables; give it a value or a `default`")]
    Empty { index: usize },
    #[error("variable {{{index}}} `{value}` contains `{bracket}`: the provider wraps each variable in brackets, so `[` and `]` cannot appear inside one; remove them")]
    Bracket {
        index: usize,
        value: String,
        bracket: char,
    },
    #[error("the template has {expected} placeholders but {got} variables were given: give exactly one variable per `{{n}}` placeholder")]
    Count { expected: usize, got: usize },
}

/// A template's variables in placeholder order (`{1}`, `{2}`, …): each non-empty and free of
/// `[` and `]`, which the wire format uses as delimiters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Variables(Vec<String>);

impl Variables {
    pub fn new<I, S>(values: I) -> Result<Variables, VariablesError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let values: Vec<String> = values.into_iter().map(Into::into).collect();
        for (i, value) in values.iter().enumerate() {
            let index = i + 1;
            if value.trim().is_empty() {
                return Err(VariablesError::Empty { index });
            }
            if let Some(bracket) = value.chars().find(|c| matches!(c, '[' | ']')) {
                return Err(VariablesError::Bracket {
                    index,
                    value: value.clone(),
                    bracket,
                });
            }
        }
        Ok(Variables(values))
    }

    pub fn empty() -> Variables {
        Variables(Vec::new())
    }

    /// Errors unless there are exactly `expected` variables (the template's placeholder count);
    /// the provider would refuse the send with code 8.
    pub fn check_count(&self, expected: usize) -> Result<(), VariablesError> {
        if self.0.len() == expected {
            Ok(())
        } else {
            Err(VariablesError::Count {
                expected,
                got: self.0.len(),
            })
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    /// The `template_variables` field: `[Carlos] [$100] [miércoles]`; `None` when there are
    /// no variables (the field is then left out).
    pub fn to_wire(&self) -> Option<String> {
        if self.0.is_empty() {
            return None;
        }
        Some(Variables::wire_text(&self.0))
    }

    /// `values` as the provider's `template_variables` field spells them (`[a] [b]`),
    /// checked or not (`recuerda preview` shows what would be posted, even when refused).
    pub fn wire_text<S: AsRef<str>>(values: &[S]) -> String {
        let parts: Vec<String> = values.iter().map(|v| format!("[{}]", v.as_ref())).collect();
        parts.join(" ")
    }
}

impl<'de> Deserialize<'de> for Variables {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let values = Vec::<String>::deserialize(d)?;
        Variables::new(values).map_err(serde::de::Error::custom)
    }
}

// ---- SendRequest ----------------------------------------------------------------------------

/// One template message, ready to send: every part already checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendRequest {
    pub template: TemplateId,
    pub mobile: Mobile,
    pub variables: Variables,
    pub media: Option<MediaUrl>,
    pub custom_field: Option<CustomField>,
}

impl SendRequest {
    /// Builds a send from unchecked parts (a rendered rule action, CLI arguments), refusing the
    /// first part the provider would refuse.
    pub fn from_parts(
        template: u32,
        mobile: &str,
        variables: Vec<String>,
        media: Option<&str>,
        custom_field: Option<&str>,
    ) -> Result<SendRequest, InvalidSend> {
        Ok(SendRequest {
            template: TemplateId(template),
            mobile: Mobile::parse(mobile)?,
            variables: Variables::new(variables)?,
            media: media.map(MediaUrl::parse).transpose()?,
            custom_field: custom_field.map(CustomField::parse).transpose()?,
        })
    }
}

/// Any mobile text for logs (a reply's may not be valid): the middle digits hidden, the
/// country code, operator prefix and last three digits kept (`57310****455`).
pub fn mask_mobile(mobile: &str) -> String {
    let chars: Vec<char> = mobile.chars().collect();
    if chars.len() <= 6 {
        return "*".repeat(chars.len());
    }
    // Too short to keep a prefix and still hide something: hide all but the last three.
    let head_len = if chars.len() > 8 { 5 } else { 0 };
    let head: String = chars[..head_len].iter().collect();
    let tail: String = chars[chars.len() - 3..].iter().collect();
    format!("{head}{}{tail}", "*".repeat(chars.len() - head_len - 3))
}

/// Number of distinct `{n}` placeholders in a template body: the variable count a send must
/// carry (`{1}` used twice counts once).
pub fn count_placeholders(body: &str) -> usize {
    let mut seen = BTreeSet::new();
    let mut rest = body;
    while let Some(open) = rest.find('{') {
        rest = &rest[open + 1..];
        let digits: &str = &rest[..rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len())];
        if !digits.is_empty() && rest[digits.len()..].starts_with('}') {
            seen.insert(digits.to_string());
        }
    }
    seen.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_counted_once_each() {
        assert_eq!(count_placeholders("Hola *{1}* con {2} el {3}, {1}"), 3);
        assert_eq!(count_placeholders("sin variables {x} {} {{1}"), 1);
        assert_eq!(count_placeholders(""), 0);
    }

    #[test]
    fn masked_hides_the_middle() {
        let m = Mobile::parse("573102334455").unwrap();
        assert_eq!(m.masked(), "57310****455");
        assert_eq!(format!("{m:?}"), "Mobile(57310****455)");
    }

    #[test]
    fn any_mobile_text_is_masked_without_panicking() {
        assert_eq!(mask_mobile("573102334455"), "57310****455");
        assert_eq!(mask_mobile("57300222222"), "57300***222");
        assert_eq!(mask_mobile("5730022"), "****022");
        assert_eq!(mask_mobile("123456"), "******");
        assert_eq!(mask_mobile(""), "");
    }
}
