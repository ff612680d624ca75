//! Usage events (API.md §9, docs/api.md "Usage events"): the filters of `GET /v1/events`
//! (event glob, status, time range, `metadata.KEY=VALUE`), one event by id, and the NDJSON and
//! CSV export of a range, with exact counts.

mod common;

use common::*;

fn plans() -> Value {
    json!({"defaultPlan": "free", "plans": [{"id": "free", "limits": [
        {"id": "everything", "quota": 1_000_000, "window": {"type": "lifetime"},
         "match": [{"event": "*"}]}]}]})
}

async fn track(c: &Client, user: &str, event: &str, quantity: u64, metadata: Value) -> String {
    let t = c
        .track(json!({"userId": user, "event": event, "quantity": quantity,
            "metadata": metadata}))
        .await
        .ok();
    t["eventId"].as_str().expect("eventId").to_string()
}

/// Every event of a filtered listing, page by page (pages of `limit`).
async fn all(c: &Client, query: &str, limit: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/events?limit={limit}");
        if !query.is_empty() {
            path.push('&');
            path.push_str(query);
        }
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page = c.get(&path).await.ok();
        out.extend(page["events"].as_array().unwrap().iter().cloned());
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return out,
        }
    }
}

fn ids(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["eventId"].as_str().unwrap())
        .collect()
}

/// Ten events over two users, three names, two models, and two hours of the test clock.
async fn history(c: &Client) -> (String, Vec<String>) {
    let mut made = Vec::new();
    for i in 0..3 {
        made.push(track(c, "u1", "image.render", 1, json!({"model": "flux-pro"})).await);
        made.push(track(c, "u2", "image.render", 2, json!({"model": "dall-e-3"})).await);
        let _ = i;
    }
    let start_of_second_hour = {
        c.advance_clock(3_600).await;
        c.clock().await.ok()["now"].as_str().unwrap().to_string()
    };
    made.push(
        track(
            c,
            "u1",
            "image.upscale",
            4,
            json!({"model": "flux-pro", "size": "4k"}),
        )
        .await,
    );
    made.push(track(c, "u1", "chat.message", 10, json!({"model": "gpt-4o"})).await);
    made.push(track(c, "u2", "chat.message", 20, json!({})).await);
    made.push(
        track(
            c,
            "u2",
            "image.render",
            1,
            json!({"model": "flux-pro", "note": "a, \"quoted\" one"}),
        )
        .await,
    );
    (start_of_second_hour, made)
}

#[tokio::test(flavor = "multi_thread")]
async fn filters_combine_and_page_exactly() {
    let (_s, c) = TestServer::with_plans(plans()).await;
    let (second_hour, made) = history(&c).await;
    let everything = all(&c, "", 3).await;
    assert_eq!(everything.len(), 10);
    let mut listed: Vec<&str> = ids(&everything);
    let mut expected: Vec<&str> = made.iter().map(String::as_str).collect();
    // Newest first, by time then id (two events of one millisecond go by id).
    let keys: Vec<(jiff::Timestamp, &str)> = everything
        .iter()
        .map(|e| {
            let at = e["occurredAt"].as_str().unwrap().parse().unwrap();
            (at, e["eventId"].as_str().unwrap())
        })
        .collect();
    let mut sorted = keys.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(keys, sorted);
    listed.sort_unstable();
    expected.sort_unstable();
    assert_eq!(listed, expected, "every event once");

    let count = |events: Vec<Value>| events.len();
    assert_eq!(count(all(&c, "event=image.*", 2).await), 8);
    assert_eq!(count(all(&c, "event=image.render", 2).await), 7);
    assert_eq!(count(all(&c, "event=*.message", 2).await), 2);
    assert_eq!(count(all(&c, "metadata.model=flux-pro", 2).await), 5);
    assert_eq!(
        count(all(&c, "metadata.model=flux-pro&metadata.size=4k", 2).await),
        1
    );
    assert_eq!(count(all(&c, "metadata.model=nothing", 2).await), 0);
    assert_eq!(count(all(&c, "userId=u1&event=image.*", 1).await), 4);
    assert_eq!(
        count(
            all(
                &c,
                "userId=u2&metadata.model=flux-pro&event=image.render",
                1
            )
            .await
        ),
        1
    );
    // The time range: `from` inclusive, `to` exclusive.
    let from = second_hour.replace(':', "%3A");
    assert_eq!(count(all(&c, &format!("from={from}"), 3).await), 4);
    assert_eq!(count(all(&c, &format!("to={from}"), 3).await), 6);
    assert_eq!(
        count(all(&c, &format!("from={from}&event=chat.*"), 3).await),
        2
    );
    assert_eq!(count(all(&c, "status=tracked", 5).await), 10);
    assert_eq!(count(all(&c, "status=denied", 5).await), 0);
    // The quantities of one filter add up exactly.
    let quantity: u64 = all(&c, "metadata.model=flux-pro", 2)
        .await
        .iter()
        .map(|e| e["quantity"].as_u64().unwrap())
        .sum();
    assert_eq!(quantity, 1 + 1 + 1 + 4 + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_filters_are_named() {
    let (_s, c) = TestServer::with_plans(plans()).await;
    c.get("/v1/events?metadata.a%20b=x")
        .await
        .invalid("metadata.a b");
    c.get(&format!("/v1/events?metadata.{}=x", "k".repeat(65)))
        .await
        .err(400, "invalid_request");
    c.get(&format!("/v1/events?metadata.model={}", "v".repeat(513)))
        .await
        .invalid("metadata.model");
    c.get(&format!("/v1/events?metadata.model={}", "v".repeat(512)))
        .await
        .ok();
    c.get("/v1/events?metadata.model=a&metadata.model=b")
        .await
        .invalid("metadata.model");
    let many: Vec<String> = (0..33).map(|i| format!("metadata.k{i}=v")).collect();
    c.get(&format!("/v1/events?{}", many.join("&")))
        .await
        .invalid("metadata");
    c.get("/v1/events?from=yesterday").await.invalid("from");
    c.get("/v1/events?to=2026-13-01T00:00:00Z")
        .await
        .invalid("to");
    c.get("/v1/events?event=image%20render")
        .await
        .invalid("event");
    c.get("/v1/events?evnt=image.render")
        .await
        .err(400, "invalid_request");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_event_by_id() {
    let (s, c) = TestServer::with_plans(plans()).await;
    let id = track(&c, "u1", "image.render", 3, json!({"model": "flux-pro"})).await;
    let e = c.get(&format!("/v1/events/{id}")).await.ok();
    assert_eq!(e["eventId"], id.as_str());
    assert_eq!(e["quantity"], 3);
    assert_eq!(e["metadata"]["model"], "flux-pro");
    assert_eq!(e["prompt"], Value::Null);
    assert_eq!(e["truncated"], false);
    // The same fields as the listing, plus the three.
    let listed = c.get("/v1/events").await.ok()["events"][0].clone();
    for (k, v) in listed.as_object().unwrap() {
        assert_eq!(&e[k], v, "{k}");
    }
    c.get("/v1/events/evt_nothing").await.err(404, "not_found");
    c.get("/v1/events/rsv_x").await.err(404, "not_found");
    // Another environment's event is nobody's here.
    s.live()
        .get(&format!("/v1/events/{id}"))
        .await
        .err(404, "not_found");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_range_exports_as_ndjson_and_csv() {
    let (_s, c) = TestServer::with_plans(plans()).await;
    history(&c).await;
    let listed = all(&c, "", 100).await;
    let newest_first = ids(&listed);

    let nd = c.get("/v1/events/export").await;
    assert_eq!(nd.status, 200);
    assert_eq!(nd.headers["content-type"], "application/x-ndjson");
    let lines: Vec<Value> = nd
        .text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(
        lines, listed,
        "the lines are the events GET /v1/events lists"
    );

    let csv = c.get("/v1/events/export?format=csv").await;
    assert_eq!(csv.status, 200);
    assert_eq!(csv.headers["content-type"], "text/csv; charset=utf-8");
    let rows: Vec<&str> = csv.text.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(
        rows[0],
        "eventId,occurredAt,userId,accountId,anonymousId,event,quantity,metadata,costMicros,\
         status,planId,reservationId,reasons,overage,creditsUsed"
    );
    assert_eq!(rows.len(), 11);
    let first_ids: Vec<&str> = rows[1..]
        .iter()
        .map(|r| r.split(',').next().unwrap())
        .collect();
    assert_eq!(first_ids, newest_first);
    // A value with a comma and quotes is one quoted field, its quotes doubled.
    let noted = rows
        .iter()
        .find(|r| r.contains("note"))
        .expect("the noted event");
    assert!(
        noted.contains(r#","{""model"":""flux-pro"",""note"":""a, \""quoted\"" one""}","#),
        "{noted}"
    );

    // Filters apply; an empty range is the header alone.
    let chats = c
        .get("/v1/events/export?format=csv&event=chat.*")
        .await
        .text;
    assert_eq!(chats.split("\r\n").filter(|l| !l.is_empty()).count(), 3);
    let none = c
        .get("/v1/events/export?format=ndjson&metadata.model=nothing")
        .await;
    assert_eq!(none.status, 200);
    assert_eq!(none.text, "");
    c.get("/v1/events/export?format=xml")
        .await
        .invalid("format");
    c.get("/v1/events/export?limit=5")
        .await
        .err(400, "invalid_request");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_export_longer_than_a_page_is_whole() {
    let (_s, c) = TestServer::with_plans(plans()).await;
    // 2,345 events: three store pages of 1,000.
    let mut handles = Vec::new();
    for i in 0..2_345u64 {
        let c = c.clone();
        handles.push(tokio::spawn(async move {
            c.track(
                json!({"userId": format!("u{}", i % 7), "event": "image.render",
                "quantity": 1, "metadata": {"n": i.to_string()}}),
            )
            .await
            .ok();
        }));
        if handles.len() == 32 {
            for h in handles.drain(..) {
                h.await.unwrap();
            }
        }
    }
    for h in handles {
        h.await.unwrap();
    }
    let nd = c.get("/v1/events/export").await;
    let mut seen: Vec<u64> = nd
        .text
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["metadata"]["n"].as_str().unwrap().parse().unwrap()
        })
        .collect();
    assert_eq!(seen.len(), 2_345);
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 2_345, "no event twice, none missing");
}
