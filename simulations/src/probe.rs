//! The last checks of a run, on the quiet cluster: nothing crosses any link for a long while (no
//! echo, no retry loop), and one probe change crosses each link a bounded number of times.

use std::collections::BTreeMap;
use std::time::Duration;

use mailmesh_actors::directory::{CreateMailbox, OpenMailbox};
use mailmesh_actors::mailbox::Append;
use mailmesh_protocol::ids::NodeId;

use crate::checks::Kind;
use crate::config::SimConfig;
use crate::network::link;
use crate::run::Run;

/// Most records one change may carry over one link (both directions of it together) in a quiet
/// cluster: the change itself, and at most a couple of overlapping exchanges when it reaches a
/// node from two sides at once. An echo loop would carry it without end.
pub const MAX_PROBE_RECORDS_PER_LINK: u64 = 4;

/// What one probe change cost on the network of a quiet cluster.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeCrossings {
    pub links: usize,
    /// Records carried over all links together.
    pub records: u64,
    /// Most records carried over one link.
    pub max_per_link: u64,
    pub requests: u64,
}

impl Run {
    /// Nothing may cross any link for `wait` (no echo, no retry loop).
    pub(crate) async fn check_quiet(&mut self, wait: Duration, when: &str) {
        let before = self.net.stats();
        tokio::time::sleep(wait).await;
        let after = self.net.stats();
        let crossed: Vec<String> = after
            .iter()
            .filter_map(|(k, s)| {
                let b = before.get(k).copied().unwrap_or_default();
                (s.requests != b.requests).then(|| {
                    format!(
                        "{}->{}: {} requests, {} records",
                        k.0,
                        k.1,
                        s.requests - b.requests,
                        s.records - b.records
                    )
                })
            })
            .collect();
        if !crossed.is_empty() {
            self.observer.report(
                Kind::Traffic,
                format!("traffic {when} (echo or a retry loop): {}", crossed.join("; ")),
            );
        }
    }

    /// One append on a random node of the quiet cluster: every node must get it, each link may
    /// carry it a bounded number of times, and the cluster must go quiet again.
    pub(crate) async fn probe(&mut self, config: &SimConfig) -> Option<ProbeCrossings> {
        let nodes = self.cluster.running();
        let creator = self.rng.pick(&nodes).clone();
        let writer = self.rng.pick(&nodes).clone();
        let directory = self.cluster.node(&creator)?.directory.clone();
        let created = directory
            .send(CreateMailbox {
                user: "alice".into(),
                name: "Probe".into(),
            })
            .await;
        if !matches!(created, Ok(Ok(_))) {
            self.observer.report(
                Kind::Probe,
                format!("probe: cannot create a mailbox on {creator}: {created:?}"),
            );
            return None;
        }
        if let Err(e) = self.cluster.settle(config.settle_limit).await {
            self.observer.report(Kind::NotQuiescent, format!("probe: {e}"));
            return None;
        }
        let before = self.net.stats();
        let local = self.cluster.node(&writer)?;
        let opened = local
            .directory
            .send(OpenMailbox {
                user: "alice".into(),
                name: "Probe".into(),
            })
            .await;
        let Ok(Ok(opened)) = opened else {
            self.observer.report(
                Kind::Probe,
                format!("probe: the new mailbox did not reach {writer}"),
            );
            return None;
        };
        let appended = opened
            .addr
            .send(Append {
                body: b"Subject: probe\r\n\r\nprobe\r\n".to_vec(),
                flags: Vec::new(),
                internaldate: None,
            })
            .await;
        drop(opened);
        let Ok(Ok(appended)) = appended else {
            self.observer.report(
                Kind::Probe,
                format!("probe: append on {writer} failed: {appended:?}"),
            );
            return None;
        };
        if let Err(e) = self.cluster.settle(config.settle_limit).await {
            self.observer.report(Kind::NotQuiescent, format!("probe: {e}"));
            return None;
        }
        let after = self.net.stats();
        let mut per_link: BTreeMap<(NodeId, NodeId), (u64, u64)> = BTreeMap::new();
        for (k, s) in &after {
            let b = before.get(k).copied().unwrap_or_default();
            let e = per_link.entry(link(&k.0, &k.1)).or_default();
            e.0 += s.records - b.records;
            e.1 += s.requests - b.requests;
        }
        let crossings = ProbeCrossings {
            links: self.cluster.topology.edges.len(),
            records: per_link.values().map(|v| v.0).sum(),
            max_per_link: per_link.values().map(|v| v.0).max().unwrap_or(0),
            requests: per_link.values().map(|v| v.1).sum(),
        };
        self.trace.log(format!(
            "probe {} appended on {writer}: {crossings:?}",
            appended.append_id
        ));
        for ((a, b), (records, _)) in &per_link {
            if *records > MAX_PROBE_RECORDS_PER_LINK {
                self.observer.report(
                    Kind::Crossings,
                    format!(
                    "one change crossed link {a}-{b} {records} times (more than {MAX_PROBE_RECORDS_PER_LINK})"
                ),
                );
            }
        }
        for (node, local) in self.cluster.nodes() {
            let snap = crate::snapshot::snapshot(local, false).await;
            let has = snap
                .mailboxes
                .values()
                .any(|m| m.visible.iter().any(|v| v.append_id == appended.append_id));
            if !has {
                self.observer.report(
                    Kind::Lost,
                    format!("probe: {node} did not get {}", appended.append_id),
                );
            }
        }
        self.check_quiet(Duration::from_secs(120), "after the probe")
            .await;
        Some(crossings)
    }
}
