//! One integration-test binary: it links once.

mod cli;
mod provider;
mod rules;
mod simulator;
