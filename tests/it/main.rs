//! One integration-test binary: it links once.

mod cli;
mod engine;
mod provider;
mod render;
mod rules;
mod simulator;
