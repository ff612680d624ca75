//! `tollgate-client` (the Rust SDK) against the real server: the reserve → commit/release
//! pattern, a race that never over-admits, a dropped answer retried without counting twice,
//! typed errors, and `with_reservation` committing on success and releasing on an error.

mod common;

use common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tollgate_client::{
    CommitRequest, Error, ReleaseRequest, ReservationError, ReserveRequest, Tollgate,
};

fn plans(quota: u64) -> Value {
    free_plan(json!([
        {"id": "images", "quota": quota, "window": lifetime(), "match": [{"event": "image.*"}]}
    ]))
}

fn reserve(user: &str, quantity: u64) -> ReserveRequest {
    ReserveRequest {
        user_id: user.into(),
        event: "image.render".into(),
        quantity: Some(quantity),
        ..ReserveRequest::default()
    }
}

async fn counts(c: &Client, user: &str) -> (i64, i64) {
    let u = c.usage(user).await.ok();
    let l = limit(&u, "images");
    (int(l, "used"), int(l, "reserved"))
}

fn client(s: &TestServer) -> Tollgate {
    Tollgate::new(&s.base_url, &s.keys.test_secret).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn reserve_then_commit_or_release() {
    let (s, c) = TestServer::with_plans(plans(5)).await;
    let tg = client(&s);
    let a = tg.reserve(reserve("u1", 2)).await.unwrap();
    assert!(a.allowed);
    let id = a.reservation_id.unwrap();
    let done = tg
        .commit(
            &id,
            CommitRequest {
                quantity: Some(1),
                ..CommitRequest::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(done.quantity, 1);
    let b = tg.reserve(reserve("u1", 3)).await.unwrap();
    tg.release(&b.reservation_id.unwrap(), ReleaseRequest::default())
        .await
        .unwrap();
    assert_eq!(counts(&c, "u1").await, (1, 0));
    let usage = tg.usage("u1").await.unwrap();
    assert_eq!(usage.limits[0].used, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_racing_reserves_admit_exactly_the_quota() {
    let (s, c) = TestServer::with_plans(plans(5)).await;
    let tg = client(&s);
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let tg = tg.clone();
            tokio::spawn(async move { tg.reserve(reserve("u1", 1)).await.unwrap().allowed })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        admitted += usize::from(t.await.unwrap());
    }
    assert_eq!(admitted, 5);
    assert_eq!(counts(&c, "u1").await, (0, 5));
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_are_typed() {
    let (s, _c) = TestServer::with_plans(plans(5)).await;
    let bad = Tollgate::new(&s.base_url, "tg_sk_test_nope").unwrap();
    let e = bad.reserve(reserve("u1", 1)).await.unwrap_err();
    assert!(
        matches!(&e, Error::Api { status: 401, code, .. } if code == "invalid_key"),
        "{e}"
    );
    let tg = client(&s);
    let e = tg.reserve(reserve("u1", 0)).await.unwrap_err();
    assert!(
        matches!(&e, Error::Api { status: 400, field: Some(f), .. } if f == "quantity"),
        "{e}"
    );
    let e = tg.get_reservation("rsv_nope").await.unwrap_err();
    assert_eq!(e.code(), Some("not_found"));
    let id = tg
        .reserve(reserve("u1", 1))
        .await
        .unwrap()
        .reservation_id
        .unwrap();
    tg.commit(&id, CommitRequest::default()).await.unwrap();
    let e = tg
        .release(&id, ReleaseRequest::default())
        .await
        .unwrap_err();
    assert!(matches!(&e, Error::Api { status: 409, .. }), "{e}");
    // Nothing listens there: fail closed, as a network error.
    let gone = Tollgate::builder("http://127.0.0.1:9", &s.keys.test_secret)
        .max_retries(0)
        .build()
        .unwrap();
    assert!(matches!(
        gone.reserve(reserve("u1", 1)).await,
        Err(Error::Network(_))
    ));
}

/// A proxy to `upstream` that forwards the first connection's request, waits for the server's
/// answer and then drops the connection without passing it on; later connections are relayed.
async fn dropping_proxy(upstream: String) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let n = count.fetch_add(1, Ordering::SeqCst);
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(mut outbound) = TcpStream::connect(&upstream).await else {
                    return;
                };
                if n == 0 {
                    let mut buf = vec![0u8; 64 * 1024];
                    let Ok(read) = inbound.read(&mut buf).await else {
                        return;
                    };
                    let _ = outbound.write_all(&buf[..read]).await;
                    let _ = outbound.read(&mut buf).await; // the answer, thrown away
                    return; // both sides dropped: the client sees no answer
                }
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_answer_retried_counts_once() {
    let (s, c) = TestServer::with_plans(plans(5)).await;
    let (proxy, seen) = dropping_proxy(s.addr.to_string()).await;
    let tg = Tollgate::new(proxy, &s.keys.test_secret).unwrap();
    let a = tg.reserve(reserve("u1", 1)).await.unwrap();
    assert!(a.allowed);
    assert!(
        seen.load(Ordering::SeqCst) >= 2,
        "the first answer was dropped"
    );
    assert_eq!(counts(&c, "u1").await, (0, 1), "held once, not twice");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_reservation_commits_on_success_and_releases_on_an_error() {
    let (s, c) = TestServer::with_plans(plans(3)).await;
    let tg = client(&s);
    let image = tg
        .with_reservation(reserve("u1", 2), |r| async move {
            assert!(r.allowed);
            Ok::<_, String>(("png".to_string(), Some(1)))
        })
        .await
        .unwrap();
    assert_eq!(image, "png");
    assert_eq!(
        counts(&c, "u1").await,
        (1, 0),
        "committed the final quantity"
    );
    let failed = tg
        .with_reservation(reserve("u1", 2), |_| async move {
            Err::<(String, Option<u64>), _>("provider timed out".to_string())
        })
        .await;
    assert!(matches!(failed, Err(ReservationError::Work(ref e)) if e == "provider timed out"));
    assert_eq!(counts(&c, "u1").await, (1, 0), "released");
    let denied = tg
        .with_reservation(
            reserve("u1", 5),
            |_| async move { Ok::<_, String>(((), None)) },
        )
        .await;
    match denied {
        Err(ReservationError::Denied(answer)) => assert_eq!(answer.denied_by, ["images"]),
        other => panic!("expected a denial, got {other:?}"),
    }
}
