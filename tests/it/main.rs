//! One integration-test binary: it links once.

mod cli;
mod provider;
mod render;
mod rules;
mod simulator;
