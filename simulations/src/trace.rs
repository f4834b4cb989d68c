//! The trace of a run: one line per event (client operations and their answers, faults, network
//! deliveries, checks), each stamped with the virtual time. Two runs of one seed must produce the
//! same lines byte for byte; the BLAKE3 of the lines is what the determinism test compares.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Clone)]
pub struct Trace {
    lines: Rc<RefCell<Vec<String>>>,
    start: Instant,
    /// Also print each line as it is logged, so a run that dies (an engine panic) still shows
    /// what led up to it.
    live: bool,
}

impl Trace {
    /// Starts the trace clock at the current virtual time. Call inside the simulation runtime.
    pub fn new() -> Self {
        Trace {
            lines: Rc::default(),
            start: Instant::now(),
            live: false,
        }
    }

    /// A trace that prints every line to stderr as it is logged.
    pub fn live() -> Self {
        Trace {
            live: true,
            ..Trace::new()
        }
    }

    /// Virtual time since the run started.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    pub fn log(&self, line: impl AsRef<str>) {
        let ms = self.start.elapsed().as_millis();
        let line = format!("{ms:>10} {}", line.as_ref());
        if self.live {
            eprintln!("{line}");
        }
        self.lines.borrow_mut().push(line);
    }

    pub fn len(&self) -> usize {
        self.lines.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut self.lines.borrow_mut())
    }
}

impl Default for Trace {
    fn default() -> Self {
        Self::new()
    }
}

/// BLAKE3 of the lines, each followed by a newline.
pub fn trace_hash(lines: &[String]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    for line in lines {
        hasher.update(line.as_bytes());
        hasher.update(b"\n");
    }
    *hasher.finalize().as_bytes()
}

/// The first 16 hex digits of a hash, for summaries.
pub fn short_hash(hash: &[u8; 32]) -> String {
    hash[..8].iter().map(|b| format!("{b:02x}")).collect()
}
