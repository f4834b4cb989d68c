//! Deterministic simulation of mailmesh nodes.
//!
//! Today: one node's real actors (Directory, Mailbox, CommitGroup on real storage in a temp dir)
//! driven by a seeded workload on a single-threaded runtime with paused, virtual time. Every
//! operation and its answer goes into a trace; the same seed gives the same trace byte for byte,
//! and the checks below run on every step. The replication engine adds nodes, a simulated network
//! and faults on top of this (DESIGN.md, "Deterministic simulation").

pub mod runtime;
pub mod single_node;

pub use runtime::deterministic_system;
pub use single_node::{run_seed, SeedReport, Violation};
