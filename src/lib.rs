//! recuerda: appointment reminders and WhatsApp follow-ups for clinics.
// Diagnostics carry file, position, hint and notes by design; they are built on the cold path of
// loading rules, so their size in a `Result` does not matter.
#![allow(clippy::result_large_err)]

pub mod app;
pub mod appointment;
pub mod bench;
pub mod cli;
pub mod clock;
pub mod config;
pub mod conversation;
pub mod duration;
pub mod engine;
pub mod http;
pub mod import;
pub mod message;
pub mod provider;
pub mod render;
pub mod rules;
pub mod secret;
pub mod simulator;
pub mod store;
