//! recuerda: appointment reminders and WhatsApp follow-ups for clinics.

pub mod cli;
pub mod clock;
pub mod config;
pub mod duration;
pub mod provider;
pub mod render;
pub mod rules;
pub mod secret;
pub mod simulator;
