//! Repeat reminders and acknowledgement on 3 real nodes through the real
//! webhook sink: while a check stays DOWN each alert with `--repeat` is
//! reminded once per slot — committed like any delivery, so a master
//! killed between slots neither skips the next nor repeats one — never
//! after RECOVERED; `qu alert ack` stops them.

use std::sync::atomic::Ordering;
use std::time::Duration;

use qu_tests::{Received, eventually};

fn slot(r: &Received) -> u32 {
    let detail = r.json["detail"].as_str().unwrap_or("");
    let tail = detail.split("reminder ").nth(1).unwrap_or_else(|| panic!("no slot in {detail:?}"));
    tail.split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

fn reminders(receiver: &qu_tests::Receiver) -> Vec<Received> {
    receiver.requests().into_iter().filter(|r| r.verb == "REMINDER" && r.accepted()).collect()
}

#[test]
fn reminders_come_once_per_slot_through_a_master_kill_and_stop_on_ack_and_recovery() {
    let (mut cluster, receiver, target) = qu_tests::alerting_cluster();
    let master = cluster.wait_converged();
    cluster.nodes[master].qu_ok(&["alert", "edit", "hook", "--repeat", "3s"]);
    let list: serde_json::Value =
        serde_json::from_str(&cluster.nodes[master].qu_ok(&["alert", "list", "--json"])).unwrap();
    assert_eq!(list[0]["repeat_secs"], 3.0, "{list}");
    target.up.store(false, Ordering::SeqCst);
    eventually(Duration::from_secs(30), "the DOWN", || (receiver.count("DOWN").0 == 1).then_some(()));
    eventually(Duration::from_secs(30), "two reminders", || (reminders(&receiver).len() >= 2).then_some(()));
    // The master dies between slots; the next one takes over the count.
    let before = reminders(&receiver).len();
    cluster.nodes[master].kill();
    let survivors: Vec<usize> = (0..3).filter(|i| *i != master).collect();
    cluster.wait_master(&survivors);
    eventually(Duration::from_secs(40), "reminders from the new master", || {
        (reminders(&receiver).len() >= before + 2).then_some(())
    });
    // A send the killed master made and could not commit may come again
    // from the next one with the same key (the receiver drops it); a slot
    // never comes under two keys.
    let mut seen = std::collections::BTreeSet::new();
    let got: Vec<Received> = reminders(&receiver).into_iter().filter(|r| seen.insert(r.key.clone())).collect();
    let slots: Vec<u32> = got.iter().map(slot).collect();
    assert!(slots.windows(2).all(|w| w[0] < w[1]), "each slot once, in order: {slots:?}");
    assert!(got[0].json["detail"].as_str().unwrap().starts_with("still DOWN since"), "{}", got[0].json);

    // Acknowledged: no more.
    let master = cluster.wait_master(&survivors);
    let out = cluster.nodes[survivors[0]].qu_ok(&["alert", "ack", "web", "--reason", "on it", "--json"]);
    assert!(out.contains("config_version"), "{out}");
    let status = cluster.nodes[master].wait_status("the ack shown", |s| s["checks"][0]["acked"]["reason"] == "on it");
    assert_eq!(status["checks"][0]["state"], "down");
    let refused = cluster.nodes[master].qu_err(&["alert", "ack", "web"]);
    assert!(refused.contains("acknowledged already"), "{refused}");
    std::thread::sleep(Duration::from_secs(2));
    let acked = reminders(&receiver).len();
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(reminders(&receiver).len(), acked, "no reminder after the ack");

    // Recovered: one RECOVERED, and never a reminder after it.
    target.up.store(true, Ordering::SeqCst);
    eventually(Duration::from_secs(30), "the RECOVERED", || (receiver.count("RECOVERED").0 == 1).then_some(()));
    std::thread::sleep(Duration::from_secs(4));
    let recovered_at = receiver.requests().iter().find(|r| r.verb == "RECOVERED").unwrap().at;
    assert!(reminders(&receiver).iter().all(|r| r.at < recovered_at), "a reminder after RECOVERED");
    let refused = cluster.nodes[master].qu_err(&["alert", "ack", "web"]);
    assert!(refused.contains("is not DOWN"), "{refused}");
}
