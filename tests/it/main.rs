//! One integration-test binary: it links once.

mod cli;
mod crash;
mod demo;
mod deploy;
mod engine;
mod hostile;
mod provider;
mod render;
mod rules;
mod schedule;
mod simulator;
mod torture;
