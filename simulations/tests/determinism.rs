//! The same seed gives the same trace, byte for byte; the checks hold on a seed range; and they
//! catch a deliberately broken run.

use mailmesh_simulations::run_seed;
use mailmesh_simulations::single_node::{run_seed_with, Sabotage};

#[test]
fn same_seed_same_trace() {
    for seed in [1, 2, 3] {
        let a = run_seed(seed, 150);
        let b = run_seed(seed, 150);
        assert_eq!(a.trace, b.trace, "seed {seed} diverged");
        assert_eq!(a.trace_hash, b.trace_hash);
    }
    assert_ne!(
        run_seed(1, 50).trace_hash,
        run_seed(2, 50).trace_hash,
        "different seeds, different runs"
    );
}

#[test]
fn seed_range_has_no_violations() {
    for seed in 0..20 {
        let report = run_seed(seed, 200);
        assert!(
            report.violations.is_empty(),
            "seed {seed}: {:?}\nreplay: cargo test -p mailmesh-simulations -- seed {seed}",
            &report.violations[..report.violations.len().min(5)]
        );
        assert!(
            report.trace.iter().any(|l| l.contains("append")),
            "seed {seed} did no appends"
        );
    }
}

#[test]
fn a_lost_message_is_caught() {
    let report = run_seed_with(4, 120, Sabotage::ForgetAnAppend);
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.what.contains("no client stored or kept")),
        "the sabotaged run went unnoticed: {:?}",
        report.violations
    );
}
