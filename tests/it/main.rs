//! One integration-test binary: it links once.

mod bench;
mod cli;
mod client_sim;
mod crash;
mod demo;
mod deploy;
mod engine;
mod hostile;
mod import;
mod logs;
mod provider;
mod render;
mod rules;
mod schedule;
mod simulate;
mod simulator;
mod torture;
