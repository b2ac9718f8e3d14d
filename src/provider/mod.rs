//! The contacto-virtual API: client, domain types that are valid once built, webhook payloads.
//! Only this module knows the provider's wire format.

mod client;
mod error;
mod multipart;
mod transport;
pub mod types;
pub mod webhook;

pub use client::{Client, RemoteTemplate};
pub use error::{
    failure_reason, Call, CodeClass, Disposition, ProviderCode, ProviderError, EXCERPT_CHARS,
};
pub use transport::{BuildError, ProxyError, Route};
pub use types::{
    count_placeholders, mask_mobile, CustomField, CustomFieldError, InvalidSend, MediaUrl,
    MediaUrlError, MessageId, MessageIdError, Mobile, MobileError, SendRequest, TemplateId,
    TemplateIdError, Variables, VariablesError,
};
pub use webhook::{DeliveryStatus, ReplyEvent, StatusEvent, WebhookError, WebhookEvent};
