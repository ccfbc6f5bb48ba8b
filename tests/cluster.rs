//! Membership with real processes: five `plexi node` processes joined in a
//! chain converge; a SIGKILLed node is seen dead within the default bound and
//! comes back alive with the same peer id and a higher incarnation; a
//! SIGTERMed node is seen `left` at once. Default timings throughout, so the
//! bounds tested are the ones an operator gets.

mod common;

use std::time::{Duration, Instant};

use common::{wait_for, NodeSpec, TestNode};

/// Issue bound: a SIGKILLed node is dead within 10 s by default.
const DEAD_BOUND: Duration = Duration::from_secs(10);
/// Target: a chain of five converges within 5 s; allow slack for a loaded CI.
const CONVERGE_BOUND: Duration = Duration::from_secs(15);

#[test]
fn chain_of_five_converges_detects_kill_rejoins_and_leaves() {
    let root = tempfile::tempdir().unwrap();
    let regions = ["eu", "us", "ap", "eu", "us"];
    let zones = ["a", "b", "a", "c", "d"];
    let names = ["n1", "n2", "n3", "n4", "n5"];
    let mut nodes: Vec<TestNode> = Vec::new();
    for i in 0..5 {
        // Each node knows only the previous one.
        let bootstrap = nodes
            .last()
            .map(|p: &TestNode| vec![p.p2p.clone()])
            .unwrap_or_default();
        nodes.push(TestNode::spawn(
            root.path(),
            NodeSpec {
                name: names[i],
                bootstrap,
                region: regions[i],
                zone: zones[i],
                config: None,
            },
        ));
    }
    let started = Instant::now();
    let converged = wait_for(CONVERGE_BOUND, || {
        nodes.iter().all(|n| n.alive_count() == 5).then_some(())
    });
    assert!(
        converged.is_some(),
        "chain did not converge: {:?}\n{}",
        nodes.iter().map(|n| n.alive_count()).collect::<Vec<_>>(),
        nodes[0].log_tail()
    );
    eprintln!(
        "chain of 5 converged {:?} after the last start",
        started.elapsed()
    );
    // Within a few seconds every node remembers every other's address
    // (`peers.json`), so a restart right now would still rejoin them all;
    // the first node was started with no bootstrap address at all.
    let remembered = wait_for(Duration::from_secs(5), || {
        nodes
            .iter()
            .all(|n| {
                let text =
                    std::fs::read_to_string(n.dir.join("data/peers.json")).unwrap_or_default();
                nodes
                    .iter()
                    .filter(|o| o.name != n.name)
                    .all(|o| text.contains(&o.peer_id))
            })
            .then_some(())
    });
    assert!(
        remembered.is_some(),
        "peers.json does not list every other node within 5 s"
    );

    // Every node sees every other with the right region, zone and peer id.
    for n in &nodes {
        for (i, other) in nodes.iter().enumerate() {
            let v = n
                .nodes()
                .into_iter()
                .find(|v| v["node_id"] == other.name)
                .unwrap();
            assert_eq!(v["peer_id"], other.peer_id.as_str());
            assert_eq!(v["region"], regions[i]);
            assert_eq!(v["zone"], zones[i]);
            assert_eq!(v["is_local"], n.name == other.name);
        }
    }
    let old_incarnation = nodes[0]
        .nodes()
        .iter()
        .find(|v| v["node_id"] == "n3")
        .unwrap()["incarnation"]
        .as_u64()
        .unwrap();

    // SIGKILL n3: every survivor sees it dead within the bound.
    nodes[2].kill();
    let killed_at = Instant::now();
    let dead = wait_for(DEAD_BOUND, || {
        [0, 1, 3, 4]
            .iter()
            .all(|&i| nodes[i].status_of("n3").as_deref() == Some("dead"))
            .then_some(())
    });
    assert!(
        dead.is_some(),
        "n3 not dead everywhere within {DEAD_BOUND:?}: {:?}",
        [0, 1, 3, 4].map(|i| nodes[i].status_of("n3"))
    );
    eprintln!(
        "SIGKILLed n3 seen dead by all after {:?}",
        killed_at.elapsed()
    );
    // It passed through suspect or went straight to dead, but never stays alive
    // on anyone, and the rest stay alive.
    for i in [0, 1, 3, 4] {
        assert_eq!(nodes[i].alive_count(), 4, "{} alive count", nodes[i].name);
    }

    // Health of a dead node, asked anywhere, says so without hanging.
    let h = nodes[0].get_json("/api/v1/clustering/nodes/n3/health");
    assert_eq!(h["healthy"], false);
    assert_eq!(h["status"], "dead");

    // Restart n3 (bootstrapping from n5 only): same peer id, higher incarnation, alive.
    let old_peer = nodes[2].peer_id.clone();
    let n5 = nodes[4].p2p.clone();
    nodes[2].restart(vec![n5]);
    assert_eq!(nodes[2].peer_id, old_peer, "identity survives restart");
    let back = wait_for(CONVERGE_BOUND, || {
        nodes
            .iter()
            .all(|n| n.status_of("n3").as_deref() == Some("alive"))
            .then_some(())
    });
    assert!(back.is_some(), "restarted n3 not alive everywhere");
    let v = nodes[0]
        .nodes()
        .into_iter()
        .find(|v| v["node_id"] == "n3")
        .unwrap();
    assert_eq!(v["peer_id"], old_peer.as_str());
    assert!(v["incarnation"].as_u64().unwrap() > old_incarnation);
    // Only one record for n3: the restart superseded the old one.
    assert_eq!(
        nodes[0]
            .nodes()
            .iter()
            .filter(|v| v["node_id"] == "n3")
            .count(),
        1
    );

    // Health of a remote node comes from that node, over the cluster network.
    let h = nodes[0].get_json("/api/v1/clustering/nodes/n3/health");
    assert_eq!(h["source"], "peer");
    assert_eq!(h["node_id"], "n3");
    assert_eq!(h["healthy"], true, "{h}");
    assert!(h["checks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["name"] == "store" && c["ok"] == true));

    // SIGTERM n4: others see `left` at once (well before failure detection),
    // and the process exits cleanly.
    nodes[3].signal(libc::SIGTERM);
    let term_at = Instant::now();
    let left = wait_for(Duration::from_secs(3), || {
        [0, 1, 2, 4]
            .iter()
            .all(|&i| nodes[i].status_of("n4").as_deref() == Some("left"))
            .then_some(())
    });
    assert!(left.is_some(), "n4 not `left` everywhere within 3 s");
    eprintln!(
        "SIGTERMed n4 seen left by all after {:?}",
        term_at.elapsed()
    );
    assert_eq!(nodes[3].wait_exit(Duration::from_secs(10)), Some(0));
    // `left` stays `left` (no resurrection by stale gossip).
    std::thread::sleep(Duration::from_millis(1500));
    for i in [0, 1, 2, 4] {
        assert_eq!(nodes[i].status_of("n4").as_deref(), Some("left"));
    }
}
