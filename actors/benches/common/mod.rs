//! What the benchmarks share: the test message and the probes that measure this machine's own
//! limits in the same run, so every figure is printed beside what the disk can do.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

/// A message of `size` bytes with a header that makes it unique (so its Guid is).
pub fn body(i: usize, size: usize) -> Vec<u8> {
    let mut b = format!("From: bench@example.org\r\nSubject: message {i}\r\n\r\n").into_bytes();
    b.resize(size, b'x');
    b
}

/// Writes `blocks` blocks of `block` bytes to a probe file under `dir`, with an fdatasync after
/// each (`sync_each`) or once at the end; returns the seconds it took.
fn timed_writes(dir: &Path, block: usize, blocks: usize, sync_each: bool) -> f64 {
    let path = dir.join("disk.probe");
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let data = vec![b'x'; block];
    let start = Instant::now();
    for _ in 0..blocks {
        file.write_all(&data).unwrap();
        if sync_each {
            file.sync_data().unwrap();
        }
    }
    if !sync_each {
        file.sync_data().unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    std::fs::remove_file(path).unwrap();
    secs
}

/// 2 KB write + fdatasync, in a loop: the limit for one-at-a-time durability.
pub fn fdatasyncs_per_second(dir: &Path) -> f64 {
    let n = 2000;
    n as f64 / timed_writes(dir, 2048, n, true)
}

/// Sequential write rate: 64 MB in 1 MB writes, then one fdatasync.
#[allow(dead_code)] // not every benchmark compares with it
pub fn disk_write_mb_per_second(dir: &Path) -> f64 {
    64.0 * (1 << 20) as f64 / 1e6 / timed_writes(dir, 1 << 20, 64, false)
}
