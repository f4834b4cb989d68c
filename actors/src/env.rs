//! The handles through which actors reach the outside world: time and randomness. A real node
//! passes the system clock and an OS-seeded generator; the simulator passes virtual time and one
//! seeded generator, so a seed replays byte for byte. Nothing in this crate reads a clock or draws
//! randomness any other way.

use std::sync::{Arc, Mutex};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Wall-clock time, as needed for INTERNALDATE and UIDVALIDITY.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn unix_millis(&self) -> i64;

    /// Microseconds since the Unix epoch, for durations too short for milliseconds (an
    /// fdatasync). A clock that knows no better answers in whole milliseconds.
    fn unix_micros(&self) -> i64 {
        self.unix_millis().saturating_mul(1000)
    }
}

/// A clock that reads a fixed epoch plus tokio's time, which the simulator pauses and advances
/// virtually. In a node started on a real runtime it advances in real time from `epoch`.
#[derive(Debug)]
pub struct TokioClock {
    epoch_millis: i64,
    start: tokio::time::Instant,
}

impl TokioClock {
    pub fn new(epoch_millis: i64) -> Self {
        TokioClock {
            epoch_millis,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn unix_millis(&self) -> i64 {
        self.epoch_millis + self.start.elapsed().as_millis() as i64
    }

    fn unix_micros(&self) -> i64 {
        self.epoch_millis * 1000 + self.start.elapsed().as_micros() as i64
    }
}

/// The one source of randomness (mailbox ids). Seeded once per node.
#[derive(Clone, Debug)]
pub struct Entropy(Arc<Mutex<ChaCha8Rng>>);

impl Entropy {
    pub fn from_seed(seed: u64) -> Self {
        Entropy(Arc::new(Mutex::new(ChaCha8Rng::seed_from_u64(seed))))
    }

    /// A generator seeded with 256 bits, as a node seeds it from the operating system, so two
    /// nodes never share a stream of mailbox ids.
    pub fn from_seed_bytes(seed: [u8; 32]) -> Self {
        Entropy(Arc::new(Mutex::new(ChaCha8Rng::from_seed(seed))))
    }

    pub fn next_u128(&self) -> u128 {
        let mut rng = self.0.lock().expect("entropy lock");
        ((rng.next_u64() as u128) << 64) | rng.next_u64() as u128
    }

    pub fn next_u64(&self) -> u64 {
        self.0.lock().expect("entropy lock").next_u64()
    }
}

/// Everything an actor may use from outside.
#[derive(Clone)]
pub struct Env {
    pub clock: Arc<dyn Clock>,
    pub entropy: Entropy,
}

impl Env {
    pub fn new(clock: Arc<dyn Clock>, entropy: Entropy) -> Self {
        Env { clock, entropy }
    }

    pub fn unix_seconds(&self) -> i64 {
        self.clock.unix_millis().div_euclid(1000)
    }
}
