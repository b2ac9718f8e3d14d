//! The contacto-virtual API: client, domain types that are valid once built, webhook payloads.
