//! One integration-test binary: it links once.

mod cli;
mod deploy;
mod provider;
mod render;
mod rules;
mod simulator;
