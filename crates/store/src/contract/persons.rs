//! Persons: logged prompts and responses (stored only when a command carries them, kept until
//! their retention passes on the environment's clock, erased with their user while the events
//! keep their counts), denials recorded only when asked, and traits merged by identify.

use super::*;
use crate::persons::{EraseCommand, Erased, Traits, TRAITS_KEYS_MAX};
use tollgate_core::input::StoredText;

fn text(s: &str) -> StoredText {
    StoredText::new(s.to_string())
}

fn track_cmd(
    env: EnvId,
    plans: &Arc<PlanDocument>,
    (u, id): (&str, &str),
    (prompt, response): (Option<&str>, Option<&str>),
    at: Timestamp,
) -> TrackCommand {
    TrackCommand {
        env,
        now: at,
        plans: plans.clone(),
        event_id: id.into(),
        user_id: user(u),
        event: EventName::parse("image.render").expect("valid"),
        quantity: Quantity::new(2).expect("valid"),
        metadata: Metadata::default(),
        occurred_at: at,
        cost_micros: None,
        prompt: prompt.map(text),
        response: response.map(text),
        enforce: false,
        record_denials: true,
        idempotency: None,
        ids: IdSeed(format!("t{id}_")),
    }
}

async fn track(store: &Arc<dyn Store>, cmd: TrackCommand) {
    let recorded = store.track(cmd).await.expect("track");
    assert!(matches!(recorded, Idempotent::Fresh(o) if o.recorded));
}

/// The event's (prompt, response, truncated, quantity).
async fn logged(
    store: &Arc<dyn Store>,
    env: EnvId,
    id: &str,
) -> (Option<String>, Option<String>, bool, u64) {
    let d = store
        .event(env, id.into())
        .await
        .expect("event")
        .expect("the event is there");
    (d.prompt, d.response, d.truncated, d.event.quantity)
}

fn traits(json: &str) -> Traits {
    match serde_json::from_str(json).expect("valid JSON") {
        serde_json::Value::Object(map) => Traits::new(map).expect("within the limits"),
        _ => panic!("not an object"),
    }
}

fn identify(
    env: EnvId,
    plans: &Arc<PlanDocument>,
    (anon, u): (&str, &str),
    t: Option<Traits>,
) -> IdentifyCommand {
    IdentifyCommand {
        env,
        now: t0(),
        plans: plans.clone(),
        anonymous_id: user(anon),
        user_id: user(u),
        traits: t,
    }
}

/// Erases in steps of `limit` until one comes back short, as the server does.
async fn erase(store: &Arc<dyn Store>, env: EnvId, u: &str, limit: usize) -> (Erased, usize) {
    let (mut total, mut steps) = (Erased::default(), 0);
    loop {
        let step = store
            .erase_user(EraseCommand {
                env,
                user_id: user(u),
                limit,
            })
            .await
            .expect("erase");
        assert!(step.rows <= limit, "a step clears at most its limit");
        total.add(step);
        steps += 1;
        if step.rows < limit {
            return (total, steps);
        }
    }
}

pub async fn logged_text_is_kept_as_given_and_denials_only_when_asked(store: Arc<dyn Store>) {
    let (env, _) = setup(&store).await;
    let plans = images(3);
    let now = t0();
    let mut cmd = reserve_cmd(env, &plans, "u1", 2, now);
    cmd.prompt = Some(text("a red fox"));
    let event_id = cmd.event_id.clone();
    let id = reserve(&store, cmd).await.reservation_id.expect("admitted");
    let mut commit = commit_cmd(env, &plans, &id, None, now);
    commit.response = Some(StoredText::new("x".repeat(40 * 1024)));
    store.commit(commit).await.expect("commit");
    let (prompt, response, truncated, quantity) = logged(&store, env, &event_id).await;
    assert_eq!(prompt.as_deref(), Some("a red fox"));
    assert_eq!(
        response.map(|r| r.len()),
        Some(tollgate_core::input::TEXT_BYTES_MAX)
    );
    assert!(truncated);
    assert_eq!(quantity, 2);
    // Denied: recorded only when the command asks.
    let mut quiet = reserve_cmd(env, &plans, "u1", 2, now);
    quiet.record_denials = false;
    let quiet_id = quiet.event_id.clone();
    assert!(!reserve(&store, quiet).await.allowed);
    assert_eq!(store.event(env, quiet_id).await.expect("event"), None);
    let loud = reserve_cmd(env, &plans, "u1", 2, now);
    let loud_id = loud.event_id.clone();
    assert!(!reserve(&store, loud).await.allowed);
    let denied = store.event(env, loud_id).await.expect("event");
    assert_eq!(denied.map(|d| d.event.status), Some("denied".to_string()));
    let mut all = EventsQuery::all(env, 10);
    all.status = Some("denied".into());
    assert_eq!(store.events(all).await.expect("events").len(), 1);
}

pub async fn logged_text_past_retention_is_purged_by_the_environments_clock(store: Arc<dyn Store>) {
    let (env, live) = setup(&store).await;
    let plans = images(100);
    let day = SignedDuration::from_hours(24);
    let t = t0();
    let half = t + SignedDuration::from_hours(12);
    track(
        &store,
        track_cmd(env, &plans, ("u1", "trk_a"), (Some("pa"), Some("ra")), t),
    )
    .await;
    track(
        &store,
        track_cmd(env, &plans, ("u1", "trk_b"), (Some("pb"), None), t),
    )
    .await;
    track(
        &store,
        track_cmd(env, &plans, ("u2", "trk_c"), (None, Some("rc")), t),
    )
    .await;
    track(
        &store,
        track_cmd(env, &plans, ("u1", "trk_d"), (Some("pd"), None), half),
    )
    .await;
    track(
        &store,
        track_cmd(live, &plans, ("u1", "trk_live"), (Some("pl"), None), t),
    )
    .await;
    // A reservation made at t, still pending when the purge runs (only a command's clock can
    // make that: a TTL is at most an hour, a retention at least a day). Its prompt is gone by
    // the purge after its commit at the latest: the engine's memory may still hold a copy for
    // the commit's event, which is dated at the reservation and so due at once.
    let mut held = reserve_cmd(env, &plans, "u3", 1, t);
    held.prompt = Some(text("held prompt"));
    let held_event = held.event_id.clone();
    let held_id = reserve(&store, held)
        .await
        .reservation_id
        .expect("admitted");
    let purge = |at: Timestamp, limit: usize| {
        let store = store.clone();
        async move {
            store
                .purge_logged_text(env, day, at, limit)
                .await
                .expect("purge")
        }
    };
    // Exactly one retention old: kept (just inside).
    assert_eq!(purge(t + day, 10).await, 0);
    assert_eq!(logged(&store, env, "trk_a").await.0.as_deref(), Some("pa"));
    // A millisecond past: the three events of t and the reservation go, two rows per step.
    let past = t + day + SignedDuration::from_millis(1);
    assert_eq!(purge(past, 2).await, 2);
    assert_eq!(purge(past, 2).await, 2);
    assert_eq!(purge(past, 2).await, 0);
    for id in ["trk_a", "trk_b", "trk_c"] {
        assert_eq!(
            logged(&store, env, id).await,
            (None, None, false, 2),
            "{id}: text cleared, the event and its quantity kept"
        );
    }
    assert_eq!(logged(&store, env, "trk_d").await.0.as_deref(), Some("pd"));
    assert_eq!(
        logged(&store, live, "trk_live").await.0.as_deref(),
        Some("pl"),
        "another environment keeps its own"
    );
    store
        .commit(commit_cmd(env, &plans, &held_id, None, t))
        .await
        .expect("commit");
    assert!(purge(past, 10).await <= 1);
    assert_eq!(
        logged(&store, env, &held_event).await,
        (None, None, false, 1)
    );
    // The environment's clock moves half a day: trk_d is a retention old by it.
    store
        .advance_clock(env, 12 * 3600 - 1)
        .await
        .expect("advance");
    assert_eq!(purge(past, 10).await, 0, "still a millisecond inside");
    store.advance_clock(env, 1).await.expect("advance");
    assert_eq!(purge(past, 10).await, 1);
    assert_eq!(logged(&store, env, "trk_d").await, (None, None, false, 2));
    let usage = usage(&store, env, &plans, "u1", past).await;
    assert_eq!(usage[0].used, 6, "usage counts every event still");
}

pub async fn erasing_a_user_clears_their_text_and_traits_and_keeps_their_usage(
    store: Arc<dyn Store>,
) {
    let (env, live) = setup(&store).await;
    let plans = images(100);
    let t = t0();
    // Traits merge across identifies: {plan, name} then {plan, seats} is three keys.
    let first = traits(r#"{"plan": "free", "name": "Ada"}"#);
    let merged = store
        .identify(identify(env, &plans, ("anon_1", "u1"), Some(first)))
        .await
        .expect("identify");
    assert!(merged.merged);
    let again = traits(r#"{"plan": "pro", "seats": 3}"#);
    let same = store
        .identify(identify(env, &plans, ("anon_1", "u1"), Some(again)))
        .await
        .expect("identify again");
    assert!(!same.merged, "traits merge on a repeated identify too");
    // 3 stored + 61 new keys = 64: just inside. One more new key is refused, whole.
    let many = |n: usize, prefix: &str| {
        let entries: Vec<String> = (0..n).map(|i| format!(r#""{prefix}{i}": {i}"#)).collect();
        traits(&format!("{{{}}}", entries.join(",")))
    };
    assert_eq!(TRAITS_KEYS_MAX, 64);
    store
        .identify(identify(env, &plans, ("anon_2", "u1"), Some(many(61, "k"))))
        .await
        .expect("64 keys in all");
    let refused = store
        .identify(identify(env, &plans, ("anon_3", "u1"), Some(many(1, "z"))))
        .await;
    assert!(
        matches!(&refused, Err(StoreError::Invalid { field, .. }) if field == "traits"),
        "{refused:?}"
    );
    let nothing_moved = store
        .identify(identify(env, &plans, ("anon_3", "u1"), None))
        .await
        .expect("identify without traits");
    assert!(nothing_moved.merged, "the refused identify merged nothing");
    // u1's logged text: two prompts with responses, one prompt alone, a pending reservation.
    track(
        &store,
        track_cmd(env, &plans, ("u1", "trk_1"), (Some("p1"), Some("r1")), t),
    )
    .await;
    track(
        &store,
        track_cmd(env, &plans, ("u1", "trk_2"), (Some("p2"), Some("r2")), t),
    )
    .await;
    track(
        &store,
        track_cmd(env, &plans, ("u1", "trk_3"), (Some("p3"), None), t),
    )
    .await;
    track(
        &store,
        track_cmd(env, &plans, ("u1", "trk_4"), (None, None), t),
    )
    .await;
    let mut held = reserve_cmd(env, &plans, "u1", 1, t);
    held.prompt = Some(text("held"));
    let held_event = held.event_id.clone();
    let held_id = reserve(&store, held)
        .await
        .reservation_id
        .expect("admitted");
    track(
        &store,
        track_cmd(env, &plans, ("u2", "trk_u2"), (Some("p"), None), t),
    )
    .await;
    track(
        &store,
        track_cmd(live, &plans, ("u1", "trk_live"), (Some("p"), None), t),
    )
    .await;
    let before = usage(&store, env, &plans, "u1", t).await;
    let (erased, steps) = erase(&store, env, "u1", 2).await;
    assert_eq!(
        (erased.prompts, erased.responses, erased.traits, erased.rows),
        (4, 2, 64, 4)
    );
    assert_eq!(steps, 3, "two full steps of two rows, then a short one");
    for id in ["trk_1", "trk_2", "trk_3", "trk_4"] {
        assert_eq!(
            logged(&store, env, id).await,
            (None, None, false, 2),
            "{id}"
        );
    }
    assert_eq!(
        usage(&store, env, &plans, "u1", t).await,
        before,
        "usage unchanged"
    );
    assert_eq!(logged(&store, env, "trk_u2").await.0.as_deref(), Some("p"));
    assert_eq!(
        logged(&store, live, "trk_live").await.0.as_deref(),
        Some("p")
    );
    store
        .commit(commit_cmd(env, &plans, &held_id, None, t))
        .await
        .expect("commit");
    assert_eq!(
        logged(&store, env, &held_event).await,
        (None, None, false, 1)
    );
    // Nothing left, and a user with nothing stored: zeros.
    for u in ["u1", "nobody"] {
        let (erased, _) = erase(&store, env, u, 2).await;
        assert_eq!(erased, Erased::default(), "{u}");
    }
    // The traits went: a new identify starts from none (64 new keys fit again).
    store
        .identify(identify(env, &plans, ("anon_4", "u1"), Some(many(64, "n"))))
        .await
        .expect("a fresh start");
}
