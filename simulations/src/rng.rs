//! The one source of randomness of a multi-node run.
//!
//! Every random choice of a run (topology, workload, faults, delays, the seeds of the nodes'
//! own entropy) is drawn from one ChaCha8 generator seeded with the run's seed. Draws happen on
//! the single simulation thread in an order fixed by the deterministic scheduler, so the seed
//! alone decides the whole run.

use std::cell::RefCell;
use std::ops::Range;
use std::rc::Rc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A shared handle on the run's generator. Cheap to clone; never borrowed across an await.
#[derive(Clone)]
pub struct SimRng(Rc<RefCell<ChaCha8Rng>>);

impl SimRng {
    pub fn new(seed: u64) -> Self {
        SimRng(Rc::new(RefCell::new(ChaCha8Rng::seed_from_u64(seed))))
    }

    pub fn u64(&self) -> u64 {
        self.0.borrow_mut().random()
    }

    /// A uniform draw from `range` (which must not be empty).
    pub fn range(&self, range: Range<u64>) -> u64 {
        self.0.borrow_mut().random_range(range)
    }

    pub fn below(&self, n: usize) -> usize {
        self.0.borrow_mut().random_range(0..n)
    }

    /// True with probability `p` (0 and below: never).
    pub fn chance(&self, p: f64) -> bool {
        p > 0.0 && self.0.borrow_mut().random_bool(p.min(1.0))
    }

    pub fn pick<'a, T>(&self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// A uniform draw in `[lo, hi)` as a float, for per-seed fault intensities.
    pub fn float(&self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.0.borrow_mut().random::<f64>()
    }
}
