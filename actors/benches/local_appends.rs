//! Durable local appends per second, beside this machine's own fdatasync rate measured in the
//! same run. Run with `cargo bench -p mailmesh-actors`; set MAILMESH_BENCH_DIR to measure another
//! disk (the default is a temp dir in the current directory, not /tmp, which may be RAM).
//!
//! Every append is acknowledged only after its body and record are durable, so one at a time a
//! node can do at most about one append per fdatasync; the group commit lets appends that arrive
//! together share one, which is what the "per fdatasync" column shows.

mod common;

use std::sync::Arc;
use std::time::Instant;

use common::fdatasyncs_per_second;

use mailmesh_actors::commit_group::GetCommitStats;
use mailmesh_actors::directory::{CreateMailbox, OpenMailbox};
use mailmesh_actors::env::{Entropy, Env, TokioClock};
use mailmesh_actors::mailbox::Append;
use mailmesh_actors::node::{LocalNode, NodeOptions};
use mailmesh_protocol::ids::NodeId;

const BODY_BYTES: usize = 2048;

fn body(i: usize) -> Vec<u8> {
    common::body(i, BODY_BYTES)
}

struct Row {
    name: &'static str,
    appends: usize,
    per_second: f64,
    groups: u64,
}

fn main() {
    let base = std::env::var("MAILMESH_BENCH_DIR").unwrap_or_else(|_| ".".into());
    let dir = tempfile::tempdir_in(base).unwrap();
    let fsyncs = fdatasyncs_per_second(dir.path());
    let rows = actix::System::new().block_on(async {
        let env = Env::new(
            Arc::new(TokioClock::new(1_700_000_000_000)),
            Entropy::from_seed(1),
        );
        let node = LocalNode::start(
            NodeOptions::new(NodeId::new("bench").unwrap(), dir.path().join("node")),
            env,
        )
        .unwrap();
        let mut mailboxes = Vec::new();
        for m in 0..100 {
            let name = format!("M{m}");
            node.directory
                .send(CreateMailbox {
                    user: "bench".into(),
                    name: name.clone(),
                })
                .await
                .unwrap()
                .unwrap();
            mailboxes.push(
                node.directory
                    .send(OpenMailbox {
                        user: "bench".into(),
                        name,
                    })
                    .await
                    .unwrap()
                    .unwrap()
                    .addr,
            );
        }
        let mut rows = Vec::new();
        let mut counter = 0usize;

        // One at a time: each append waits for the previous one's acknowledgement.
        let stats0 = node.commit.send(GetCommitStats).await.unwrap();
        let n = 2000;
        let start = Instant::now();
        for _ in 0..n {
            counter += 1;
            mailboxes[0]
                .send(Append {
                    body: body(counter),
                    flags: vec![],
                    internaldate: None,
                })
                .await
                .unwrap()
                .unwrap();
        }
        let elapsed = start.elapsed().as_secs_f64();
        let stats1 = node.commit.send(GetCommitStats).await.unwrap();
        rows.push(Row {
            name: "one at a time",
            appends: n,
            per_second: n as f64 / elapsed,
            groups: stats1.groups - stats0.groups,
        });

        // 100 arriving together, to one mailbox and spread over 100 mailboxes (an LMTP delivery).
        for (name, spread) in [
            ("100 together, one mailbox", false),
            ("100 together, 100 mailboxes", true),
        ] {
            let rounds = 100;
            let before = node.commit.send(GetCommitStats).await.unwrap();
            let start = Instant::now();
            for _ in 0..rounds {
                let mut tasks = Vec::with_capacity(100);
                for k in 0..100 {
                    counter += 1;
                    let mb = if spread {
                        mailboxes[k].clone()
                    } else {
                        mailboxes[1].clone()
                    };
                    let b = body(counter);
                    tasks.push(actix::spawn(async move {
                        mb.send(Append {
                            body: b,
                            flags: vec![],
                            internaldate: None,
                        })
                        .await
                        .unwrap()
                        .unwrap()
                    }));
                }
                for t in tasks {
                    t.await.unwrap();
                }
            }
            let elapsed = start.elapsed().as_secs_f64();
            let after = node.commit.send(GetCommitStats).await.unwrap();
            rows.push(Row {
                name,
                appends: rounds * 100,
                per_second: (rounds * 100) as f64 / elapsed,
                groups: after.groups - before.groups,
            });
        }
        actix::System::current().stop();
        rows
    });

    println!();
    println!("durable local appends, {BODY_BYTES}-byte messages; this disk: {fsyncs:.0} fdatasyncs/s (2 KB write + fdatasync)");
    println!(
        "{:<30} {:>8} {:>12} {:>10} {:>16}",
        "workload", "appends", "appends/s", "commits", "per fdatasync"
    );
    for r in &rows {
        println!(
            "{:<30} {:>8} {:>12.0} {:>10} {:>16.2}",
            r.name,
            r.appends,
            r.per_second,
            r.groups,
            r.per_second / fsyncs
        );
    }
    println!("target: over 20,000 appends/s when 100 arrive together");
}
