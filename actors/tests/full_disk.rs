//! A full disk: writes fail with a clear error, nothing acknowledged is lost, the node keeps
//! running, and once space is freed writes succeed again. Uses a small tmpfs, so it needs root
//! (as CI and the developer machines have).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use mailmesh_actors::mailbox::*;
use mailmesh_actors::uid_set::UidSet;
use mailmesh_actors::MailError;

/// A tmpfs of a fixed size, unmounted on drop.
struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let path = std::env::temp_dir().join(format!("mailmesh-full-disk-{}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "mounting a tmpfs needs root; this test simulates a full disk with one"
        );
        SmallDisk { path }
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
        let _ = std::fs::remove_dir(&self.path);
    }
}

#[test]
fn a_full_disk_fails_writes_cleanly_and_recovers() {
    let disk = SmallDisk::mount("8m");
    let data = disk.path().join("node");
    // Space an operator can free once the disk is full.
    let ballast = disk.path().join("ballast");
    std::fs::write(&ballast, vec![0u8; 1 << 20]).unwrap();
    run(|| async {
        let node = start(&data);
        let mb = mailbox(&node, "alice", "INBOX").await;
        // Fill the disk with appends until the store refuses.
        let mut acked = Vec::new();
        let mut failure = None;
        for i in 0..400 {
            let body = format!("Subject: {i}\r\n\r\n{}\r\n", "z".repeat(60_000)).into_bytes();
            match mb
                .send(Append {
                    body: body.clone(),
                    flags: vec![],
                    internaldate: None,
                })
                .await
                .unwrap()
            {
                Ok(o) => acked.push((o.uid, body)),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let failure = failure.expect("an 8 MiB disk fills up");
        assert!(matches!(failure, MailError::Store(_)), "{failure:?}");
        let text = failure.to_string();
        assert!(
            text.contains("No space left") || text.contains("space"),
            "unclear error: {text}"
        );
        assert!(acked.len() > 10, "only {} appends fit", acked.len());

        // The node still answers and everything acknowledged is intact.
        for (uid, body) in &acked {
            assert_eq!(&mb.send(FetchBody { uid: *uid }).await.unwrap().unwrap(), body);
        }
        // The operator frees space: deleting messages works again, and new messages are stored
        // with uids above every one handed out before the failure.
        std::fs::remove_file(&ballast).unwrap();
        let gone = mb
            .send(Expunge {
                mode: ExpungeMode::Uids(UidSet::range(acked[0].0, acked[acked.len() / 2].0)),
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(gone.len(), acked.len() / 2 + 1);
        let recovered = mb
            .send(Append {
                body: b"Subject: small\r\n\r\nx\r\n".to_vec(),
                flags: vec![],
                internaldate: None,
            })
            .await
            .unwrap();
        let o = recovered.expect("writes succeed once space is free");
        assert!(
            o.uid > acked.last().unwrap().0,
            "uids keep growing after a failed commit"
        );
    });
}
