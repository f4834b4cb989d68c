//! What a node does with bad input on a good link: the test plays a configured peer (valid
//! certificate, good Hello), then sends random bytes, a truncated frame and an oversize frame,
//! each on its own stream. Each resets that stream alone; the same connection then still gets
//! answers.

mod support;

use mailmesh_protocol::codec::{check_hello, encode_frame, hello, FrameDecoder, DEFAULT_MAX_FRAME};
use mailmesh_protocol::ids::NodeId;
use mailmesh_protocol::wire::{Frame, Request, Response};
use support::cluster::cluster_specs;
use support::quic::{client_config, runtime};
use tempfile::TempDir;

/// Sends `bytes` on a new stream, finishes it, and reads the whole answer.
async fn exchange(conn: &quinn::Connection, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(bytes).await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    recv.read_to_end(64 << 20).await.map_err(|e| e.to_string())
}

fn decode(bytes: &[u8]) -> Frame {
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
    decoder.push(bytes);
    decoder.next_frame().unwrap().expect("a whole frame")
}

#[test]
fn random_bytes_truncated_and_oversize_frames_reset_their_stream_only() {
    let tmp = TempDir::new().unwrap();
    let specs = cluster_specs(tmp.path(), &["n1", "n2"]);
    let (n1, n2) = (&specs[0], &specs[1]);
    n1.write_config(&[n2]);
    let mut node1 = n1.start();

    runtime().block_on(async {
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let config = client_config(&n2.ca, &n2.certs, "n2");
        let conn = endpoint
            .connect_with(config, n1.address().parse().unwrap(), "n1")
            .unwrap()
            .await
            .expect("TLS handshake with a good certificate");
        let ours = encode_frame(
            &hello(NodeId::new("n2").unwrap(), DEFAULT_MAX_FRAME),
            DEFAULT_MAX_FRAME,
        )
        .unwrap();
        let theirs = decode(&exchange(&conn, &ours).await.expect("Hello answered"));
        check_hello(&theirs, Some(&NodeId::new("n1").unwrap())).expect("n1's Hello");

        let random: Vec<u8> = (0..4096).map(|_| rand::random::<u8>()).collect();
        // A well-formed length, then garbage where MessagePack should be.
        let mut garbage_frame = 4092u32.to_be_bytes().to_vec();
        garbage_frame.extend_from_slice(&[0xc1; 4092]);
        let mut truncated = 100u32.to_be_bytes().to_vec();
        truncated.extend_from_slice(&[0x93; 10]);
        let oversize = (1u32 << 30).to_be_bytes().to_vec();
        let bad = [
            ("random bytes", random),
            ("garbage frame", garbage_frame),
            ("truncated frame", truncated),
            ("oversize frame", oversize),
        ];
        for (what, bytes) in bad {
            let answer = exchange(&conn, &bytes).await;
            assert!(answer.is_err(), "{what} got an answer: {answer:?}");
            assert!(conn.close_reason().is_none(), "{what} closed the connection");
        }

        // The same connection still serves a good request.
        let request = Frame::Request {
            id: 7,
            request: Request::MissingBodies { guids: Vec::new() },
        };
        let answer = exchange(&conn, &encode_frame(&request, DEFAULT_MAX_FRAME).unwrap())
            .await
            .expect("a good request is answered");
        assert_eq!(
            decode(&answer),
            Frame::Response {
                id: 7,
                response: Response::Missing { guids: Vec::new() }
            }
        );

        node1.wait_for_stderr_count("bad stream from peer", 4);
        for line in node1.stderr_lines("bad stream from peer") {
            assert!(line.contains("peer=n2"), "{line}");
        }
        // Each reason is named (random bytes read as some length: usually an oversize one).
        for reason in ["exceeds the maximum", "malformed frame", "truncated frame"] {
            assert!(
                !node1.stderr_lines(reason).is_empty(),
                "no {reason:?}:\n{}",
                node1.stderr()
            );
        }
        // The link stayed up through all of it.
        assert!(node1.stderr_lines("link down").is_empty(), "{}", node1.stderr());
        assert!(conn.close_reason().is_none());
        conn.close(0u32.into(), b"done");
        endpoint.wait_idle().await;
    });

    assert!(node1.is_running());
    node1.signal(libc::SIGTERM);
    node1.wait().expect_code(0).expect_no_panic();
}
