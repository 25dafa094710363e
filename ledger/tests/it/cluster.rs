//! Several nodes on one PostgreSQL ledger: the lease's fencing and the shared intake's
//! exactness, against a real server (skipped loudly without one).

use baton_ledger::cluster::{Fence, IntakeItem, IntakeKind, IntakeLimits, IntakeRefusal, Intaken};
use baton_ledger::{EntryKind, LedgerError, NewEntry};

use crate::common::{writer, Participant, TestDb};

const LEASE_MS: i64 = 60_000;
const LIMITS: IntakeLimits = IntakeLimits {
    orders_per_interval_max: 3,
    open_orders_per_participant_max: 2,
};

fn order(p: &Participant, nonce: u64, interval: i64) -> IntakeItem {
    IntakeItem {
        kind: IntakeKind::Order,
        participant: p.id.clone(),
        nonce,
        order_id: format!("{}-{nonce}", p.id),
        interval_start: interval,
        body: p.signed(nonce).to_bytes(),
        accepted_at_ms: 0,
    }
}

fn cancel(p: &Participant, nonce: u64, target: &str) -> IntakeItem {
    IntakeItem {
        kind: IntakeKind::Cancel,
        participant: p.id.clone(),
        nonce,
        order_id: target.to_string(),
        interval_start: 0,
        body: p.signed(nonce).to_bytes(),
        accepted_at_ms: 0,
    }
}

/// A stale leader's append fails once another node has taken the lease; the new leader's
/// succeeds; a follower never appends; and all of it on one linear chain.
#[tokio::test]
async fn a_replaced_leaders_appends_are_fenced() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let a = writer(&db.url).await;
    let b = writer(&db.url).await;
    let c = a.cluster().unwrap();
    assert_eq!(c.lease().await.unwrap().holder, None);
    let epoch_a = c
        .try_acquire("a", "127.0.0.1:1", LEASE_MS)
        .await
        .unwrap()
        .unwrap();
    // A live lease cannot be taken.
    assert_eq!(
        c.try_acquire("b", "127.0.0.1:2", LEASE_MS).await.unwrap(),
        None
    );
    a.set_fence(Fence::Leader {
        node: "a".into(),
        epoch: epoch_a,
    })
    .await
    .unwrap();
    b.set_fence(Fence::Follower).await.unwrap();
    let p = Participant::new(1);
    a.append(vec![p.admit()]).await.unwrap();
    match b.append(vec![p.order(1)]).await {
        Err(LedgerError::Fenced(why)) => assert!(why.contains("follower"), "{why}"),
        other => panic!("a follower appended: {other:?}"),
    }
    // The lease expires (the leader stalled); b takes it with a higher epoch.
    assert!(c.renew("a", epoch_a, 1).await.unwrap());
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let epoch_b = c
        .try_acquire("b", "127.0.0.1:2", LEASE_MS)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(epoch_b, epoch_a + 1);
    b.set_fence(Fence::Leader {
        node: "b".into(),
        epoch: epoch_b,
    })
    .await
    .unwrap();
    // The old leader resumes: its append and its renewal are refused.
    match a.append(vec![p.order(2)]).await {
        Err(LedgerError::Fenced(why)) => {
            assert!(why.contains(&format!("epoch {epoch_b}")), "{why}")
        }
        other => panic!("a stale leader appended: {other:?}"),
    }
    assert!(!c.renew("a", epoch_a, LEASE_MS).await.unwrap());
    b.append(vec![p.order(3)]).await.unwrap();
    // Releasing hands the lease over at once, to a higher epoch.
    c.release("b", epoch_b).await.unwrap();
    assert_eq!(
        c.try_acquire("a", "127.0.0.1:1", LEASE_MS).await.unwrap(),
        Some(epoch_b + 1)
    );
    let report =
        baton_ledger::audit::verify(&db.url, &crate::common::operator().public_key(), None)
            .await
            .unwrap();
    assert_eq!(report.entries, 2, "{report}");
    a.close().await;
    b.close().await;
    db.cleanup().await;
}

/// Intake from two nodes: nonces increase per participant across nodes, the gate closes for
/// everyone, limits count every node's orders, cancels are checked against the order's owner
/// and state, and the sequencer's marking is exactly once.
#[tokio::test]
async fn shared_intake_is_exact_across_nodes() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let ledger = writer(&db.url).await;
    let n1 = ledger.cluster().unwrap();
    let n2 = writer(&db.url).await.cluster().unwrap();
    let (p, q) = (Participant::new(1), Participant::new(2));
    let t = 1_700_000_100;
    let r = n1.intake("n1", &[order(&p, 5, t)], &LIMITS).await.unwrap();
    let first = r[0].clone().unwrap();
    assert_eq!(first.interval_start, t);
    // The same nonce, or a lower one, through the other node.
    let r = n2
        .intake(
            "n2",
            &[order(&p, 5, t), order(&p, 4, t), order(&p, 6, t)],
            &LIMITS,
        )
        .await
        .unwrap();
    assert_eq!(
        r[0],
        Err(IntakeRefusal::NonceNotIncreasing { nonce: 5, last: 5 })
    );
    assert_eq!(
        r[1],
        Err(IntakeRefusal::NonceNotIncreasing { nonce: 4, last: 5 })
    );
    let second: Intaken = r[2].clone().unwrap();
    assert!(second.intake_id > first.intake_id);
    // p holds two open orders, its limit.
    let r = n1.intake("n1", &[order(&p, 7, t)], &LIMITS).await.unwrap();
    assert_eq!(r[0], Err(IntakeRefusal::OpenOrdersFull(2)));
    // q's order fills the interval (3); another is refused.
    let r = n2
        .intake("n2", &[order(&q, 1, t), order(&q, 2, t)], &LIMITS)
        .await
        .unwrap();
    assert!(r[0].is_ok());
    assert_eq!(r[1], Err(IntakeRefusal::IntervalFull(3)));
    // Cancels: someone else's order, an unknown one, then p's own, then again.
    let r = n1
        .intake(
            "n1",
            &[
                cancel(&q, 3, "p1-5"),
                cancel(&q, 4, "p1-99"),
                cancel(&p, 8, "p1-5"),
                cancel(&p, 9, "p1-5"),
            ],
            &LIMITS,
        )
        .await
        .unwrap();
    assert_eq!(r[0], Err(IntakeRefusal::NotYours("p1-5".into())));
    assert_eq!(r[1], Err(IntakeRefusal::UnknownOrder("p1-99".into())));
    assert_eq!(r[2].clone().unwrap().interval_start, t);
    assert_eq!(r[3], Err(IntakeRefusal::AlreadyCancelled("p1-5".into())));
    // The cancel freed a place for p and in the interval.
    let r = n2.intake("n2", &[order(&p, 10, t)], &LIMITS).await.unwrap();
    assert!(r[0].is_ok(), "{r:?}");
    // The gate closes for both nodes: orders and cancels for t are refused from then on.
    assert_eq!(n1.close_gate(t).await.unwrap(), 3);
    let r = n2
        .intake("n2", &[order(&q, 5, t), cancel(&p, 11, "p1-6")], &LIMITS)
        .await
        .unwrap();
    assert_eq!(r[0], Err(IntakeRefusal::GateClosed(t)));
    assert_eq!(r[1], Err(IntakeRefusal::GateClosed(t)));
    // Sequencing: every acknowledged row once, in intake-id order (p's nonces increase).
    let pending = n1.pending(100).await.unwrap();
    let ids: Vec<i64> = pending.iter().map(|r| r.intake_id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert_eq!(
        pending.len(),
        5,
        "orders p1-5, p1-6, q-1, p1-10 and one cancel"
    );
    let entries: Vec<NewEntry> = pending
        .iter()
        .map(|r| {
            let kind = match r.kind {
                IntakeKind::Order => EntryKind::Order,
                IntakeKind::Cancel => EntryKind::Cancel,
            };
            NewEntry::new(kind, Some(r.interval_start), r.body.clone())
        })
        .collect();
    let appended = ledger
        .append_sequenced(entries.clone(), &ids)
        .await
        .unwrap();
    assert_eq!(appended.last_seq - appended.first_seq + 1, 5);
    assert!(n1.pending(100).await.unwrap().is_empty());
    // A second sequencing of the same rows (a leader replaying after a crash) is refused whole.
    match ledger.append_sequenced(entries, &ids).await {
        Err(LedgerError::Conflict { reason, .. }) => {
            assert!(reason.contains("already sequenced"), "{reason}")
        }
        other => panic!("intake sequenced twice: {other:?}"),
    }
    assert_eq!(
        n2.order_seq("p1-6").await.unwrap(),
        Some(Some(appended.first_seq + 1))
    );
    assert_eq!(n2.order_seq("p1-99").await.unwrap(), None);
    ledger.close().await;
    db.cleanup().await;
}
