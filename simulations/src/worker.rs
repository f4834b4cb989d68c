//! A seed's report as lines of text, so the runner can run every seed in a process of its own:
//! an engine panic then takes down one seed's process (reported as a violation of that seed),
//! not the whole run, and seeds can run side by side on several cores.

use std::time::Duration;

use crate::checks::{Kind, Violation};
use crate::run::{FaultCounts, ProbeCrossings, SimReport};

/// The last line of a complete report; a process that died early never prints it.
pub const END: &str = "@end";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The report without its trace (the trace stays with `--seed N --trace`).
pub fn encode(r: &SimReport) -> String {
    let f = &r.faults;
    let mut out = vec![
        format!("@seed {}", r.seed),
        format!("@cluster {}", r.cluster),
        format!("@hash {}", hex(&r.trace_hash)),
        format!("@virtual_ms {}", r.virtual_time.as_millis()),
        format!("@busy_ms {}", r.busy_time.as_millis()),
        format!(
            "@faults {} {} {} {} {} {} {}",
            f.crashes,
            f.partitions,
            f.topology_edits,
            f.dropped_requests,
            f.dropped_responses,
            f.duplicated,
            f.wipes
        ),
        format!(
            "@counts {} {} {} {} {}",
            r.client_ops, r.changes, r.requests, r.records, r.samples
        ),
    ];
    if let Some(s) = r.settle_time {
        out.push(format!("@settle_ms {}", s.as_millis()));
    }
    if let Some(p) = r.probe {
        out.push(format!(
            "@probe {} {} {} {}",
            p.links, p.records, p.max_per_link, p.requests
        ));
    }
    for v in &r.violations {
        out.push(format!(
            "@violation {} {} {}",
            v.kind.tag(),
            v.at_ms,
            v.what.replace('\n', " ")
        ));
    }
    out.push(END.to_string());
    out.join("\n") + "\n"
}

fn numbers<const N: usize>(rest: &str) -> Result<[u64; N], String> {
    let parsed: Vec<u64> = rest
        .split_whitespace()
        .map(|w| w.parse().map_err(|e| format!("{w:?}: {e}")))
        .collect::<Result<_, _>>()?;
    parsed
        .try_into()
        .map_err(|v: Vec<u64>| format!("expected {N} numbers, got {}", v.len()))
}

/// Reads a report printed by [`encode`]; fails if it is incomplete (the process died).
pub fn decode(text: &str) -> Result<SimReport, String> {
    let mut r = SimReport::default();
    let mut complete = false;
    for line in text.lines() {
        let (key, rest) = line.split_once(' ').unwrap_or((line, ""));
        match key {
            "@seed" => r.seed = rest.parse().map_err(|e| format!("seed: {e}"))?,
            "@cluster" => r.cluster = rest.to_string(),
            "@hash" => r.trace_hash = unhex(rest).ok_or("bad hash")?,
            "@virtual_ms" => r.virtual_time = Duration::from_millis(numbers::<1>(rest)?[0]),
            "@busy_ms" => r.busy_time = Duration::from_millis(numbers::<1>(rest)?[0]),
            "@faults" => {
                let [c, p, t, dq, dr, d, w] = numbers(rest)?;
                r.faults = FaultCounts {
                    crashes: c,
                    partitions: p,
                    topology_edits: t,
                    dropped_requests: dq,
                    dropped_responses: dr,
                    duplicated: d,
                    wipes: w,
                };
            }
            "@counts" => {
                [r.client_ops, r.changes, r.requests, r.records, r.samples] = numbers(rest)?;
            }
            "@settle_ms" => r.settle_time = Some(Duration::from_millis(numbers::<1>(rest)?[0])),
            "@probe" => {
                let [links, records, max_per_link, requests] = numbers(rest)?;
                r.probe = Some(ProbeCrossings {
                    links: links as usize,
                    records,
                    max_per_link,
                    requests,
                });
            }
            "@violation" => {
                let mut parts = rest.splitn(3, ' ');
                let tag = parts.next().unwrap_or_default();
                let kind = Kind::from_tag(tag).ok_or_else(|| format!("unknown kind {tag:?}"))?;
                let at_ms = parts
                    .next()
                    .unwrap_or_default()
                    .parse()
                    .map_err(|e| format!("violation time: {e}"))?;
                r.violations.push(Violation {
                    at_ms,
                    kind,
                    what: parts.next().unwrap_or_default().to_string(),
                });
            }
            END => complete = true,
            _ => {}
        }
    }
    if complete {
        Ok(r)
    } else {
        Err("the report is incomplete".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_survives_the_round_trip() {
        let report = SimReport {
            seed: 42,
            cluster: "ring of 5".into(),
            trace: Vec::new(),
            trace_hash: [7; 32],
            violations: vec![Violation {
                at_ms: 1234,
                kind: Kind::UidReused,
                what: "uid 1 shown as a-1\\nand later as b-2".into(),
            }],
            virtual_time: Duration::from_millis(750_000),
            faults: FaultCounts {
                crashes: 1,
                partitions: 2,
                topology_edits: 3,
                dropped_requests: 4,
                dropped_responses: 5,
                duplicated: 6,
                wipes: 7,
            },
            client_ops: 100,
            changes: 50,
            requests: 999,
            records: 321,
            samples: 30,
            settle_time: Some(Duration::from_millis(2500)),
            busy_time: Duration::from_millis(30_000),
            probe: Some(ProbeCrossings {
                links: 5,
                records: 6,
                max_per_link: 2,
                requests: 20,
            }),
        };
        let back = decode(&encode(&report)).unwrap();
        assert_eq!(back.seed, 42);
        assert_eq!(back.cluster, report.cluster);
        assert_eq!(back.trace_hash, report.trace_hash);
        assert_eq!(back.violations, report.violations);
        assert_eq!(back.virtual_time, report.virtual_time);
        assert_eq!(back.faults, report.faults);
        assert_eq!(
            (
                back.client_ops,
                back.changes,
                back.requests,
                back.records,
                back.samples
            ),
            (100, 50, 999, 321, 30)
        );
        assert_eq!(back.settle_time, report.settle_time);
        assert_eq!(back.busy_time, report.busy_time);
        assert_eq!(back.probe, report.probe);
    }

    #[test]
    fn a_report_cut_short_is_refused() {
        let text = "@seed 1\n@cluster mesh of 2\n";
        assert!(decode(text).is_err());
    }

    #[test]
    fn every_kind_has_a_tag_that_reads_back() {
        for kind in Kind::ALL {
            assert_eq!(Kind::from_tag(&kind.tag()), Some(kind));
        }
        assert_eq!(Kind::UidConflictKept.tag(), "uid-conflict-kept");
    }
}
