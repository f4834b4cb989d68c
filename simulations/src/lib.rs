//! Deterministic simulation of mailmesh nodes (DESIGN.md, "Deterministic simulation").
//!
//! Two simulators share the deterministic runtime ([`runtime`]): one node's actors under a
//! seeded workload ([`single_node`]), and a whole cluster ([`run`], configured by [`config`]):
//! 2 to 7 nodes' real actors on real stores, linked by a simulated network with faults
//! ([`network`]), crashed, restarted, partitioned and reconfigured ([`faults`], [`cluster`],
//! [`topology`]), driven by seeded clients ([`workload`]), read back ([`snapshot`], and whole replicated state: [`replicated`]) and judged by
//! invariant checks ([`checks`], [`probe`], [`violation`]) against what clients were told
//! ([`model`]). One generator ([`rng`]) seeded from the run's seed draws everything; the
//! [`trace`] of a seed is the same byte for byte on every run. The runner binary (`main.rs`)
//! runs each seed in a worker process of its own ([`worker`]).

pub mod checks;
pub mod cluster;
pub mod config;
pub mod faults;
pub mod model;
pub mod network;
pub mod probe;
pub mod replicated;
pub mod rng;
pub mod run;
pub mod runtime;
pub mod single_node;
pub mod snapshot;
pub mod topology;
pub mod trace;
pub mod violation;
pub mod worker;
pub mod workload;

pub use runtime::deterministic_system;
pub use single_node::{run_seed, SeedReport, Violation};
