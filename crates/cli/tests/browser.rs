//! The browser surface (API.md §12, docs/browser.md): user tokens, the routes a page reads with a
//! publishable key and a token, the origins an environment allows, and `/widget.js`.
//!
//! The refusals of issue 15 are here: a token for another user, an expired token, a token from
//! the test environment on live, a publishable key on every secret route (walked from
//! `/openapi.json`), and a call from an origin the environment does not list.

mod common;

use common::*;
use jiff::Timestamp;
use tollgate_server::user_token::{mint, Claims};

const TOKEN: &str = "X-Tollgate-User-Token";

fn plans() -> Value {
    json!({"defaultPlan": "free", "plans": [{"id": "free", "name": "Free", "public": true,
        "limits": [{"id": "images_daily", "quota": 5, "window": {"type": "calendar", "period": "day", "timezone": "UTC"},
                    "match": [{"event": "image.render"}]}]}]})
}

async fn server() -> (TestServer, Client) {
    let (s, c) = TestServer::with_plans(plans()).await;
    s.live().put_plans(plans()).await.ok();
    (s, c)
}

async fn token(c: &Client, user: &str) -> String {
    let t = c
        .post("/v1/user-tokens", json!({"userId": user, "ttlSeconds": 60}))
        .await
        .ok();
    t["token"].as_str().expect("token").to_string()
}

async fn me(p: &Client, token: &str) -> Resp {
    p.request_with_headers(Method::GET, "/v1/me/usage", &[(TOKEN, token)], None)
        .await
}

/// Reserves `n` units of `image.render` for `user`.
async fn use_images(c: &Client, user: &str, n: u64) {
    c.reserve(json!({"userId": user, "event": "image.render", "quantity": n}))
        .await
        .ok();
}

fn images(usage: &Value) -> &Value {
    usage["limits"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["limitId"] == "images_daily"))
        .unwrap_or_else(|| panic!("no images_daily in {usage}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_reads_its_own_user_and_nobody_else() {
    let (s, c) = server().await;
    use_images(&c, "alice", 2).await;
    use_images(&c, "bob", 4).await;
    let p = s.publishable();
    let alice = token(&c, "alice").await;
    let answer = me(&p, &alice).await.ok();
    assert_eq!(answer["userId"], "alice");
    assert_eq!(
        answer,
        c.usage("alice").await.ok(),
        "the answer of /v1/users/alice/usage"
    );
    assert_eq!(images(&answer)["reserved"], 2);
    assert_eq!(images(&answer)["remaining"], 3);
    // No way to name another user: the token's user is the only one.
    let other = p
        .request_with_headers(
            Method::GET,
            "/v1/me/usage?userId=bob",
            &[(TOKEN, &alice)],
            None,
        )
        .await;
    let e = other.err(400, "invalid_request");
    assert!(e["message"].as_str().unwrap().contains("userId"), "{e}");
    let bob = token(&c, "bob").await;
    assert_eq!(images(&me(&p, &bob).await.ok())["reserved"], 4);
    // The event filter of the usage route works here too.
    let filtered = p
        .request_with_headers(
            Method::GET,
            "/v1/me/usage?event=image.render",
            &[(TOKEN, &alice)],
            None,
        )
        .await
        .ok();
    assert_eq!(filtered["limits"].as_array().map(Vec::len), Some(1));
    // Credits: the answer of /v1/users/alice/credits.
    let credits = p
        .request_with_headers(Method::GET, "/v1/me/credits", &[(TOKEN, &alice)], None)
        .await
        .ok();
    assert_eq!(credits, c.get("/v1/users/alice/credits").await.ok());
    // A secret key with a token reads the same.
    assert_eq!(me(&c, &alice).await.ok()["userId"], "alice");
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_altered_missing_and_foreign_tokens_are_refused() {
    let (s, c) = server().await;
    let p = s.publishable();
    let settings = c.get("/v1/settings").await.ok();
    let secret = settings["tokenSecret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("tg_ts_test_"), "{secret}");
    assert_eq!(settings["environment"], "test");
    assert_eq!(settings["projectId"], s.keys.project_id.as_str());
    let claims = |exp: i64| Claims {
        v: 1,
        prj: s.keys.project_id.clone(),
        env: "test".into(),
        sub: "alice".into(),
        exp,
    };
    let now = Timestamp::now().as_second();
    // Minted offline with the environment's secret: accepted until it expires.
    me(&p, &mint(&secret, &claims(now + 60))).await.ok();
    let expired = me(&p, &mint(&secret, &claims(now - 1))).await;
    assert!(expired.err(401, "invalid_key")["message"]
        .as_str()
        .unwrap()
        .contains("expired"));
    // One character of the payload or the signature changed.
    let good = token(&c, "alice").await;
    for at in [8, good.len() - 3] {
        let mut altered = good.clone().into_bytes();
        altered[at] = if altered[at] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(altered).unwrap();
        me(&p, &altered).await.err(401, "invalid_key");
    }
    // Signed with another secret: the live environment's.
    let live_secret = s.live().get("/v1/settings").await.ok()["tokenSecret"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(live_secret, secret);
    me(&p, &mint(&live_secret, &claims(now + 60)))
        .await
        .err(401, "invalid_key");
    // A test token on live: forbidden, whatever it was signed with.
    let live_p = s.client_with(&s.keys.live_publishable);
    me(&live_p, &good).await.err(403, "forbidden");
    let other_project = Claims {
        prj: "prj_other".into(),
        ..claims(now + 60)
    };
    me(&p, &mint(&secret, &other_project))
        .await
        .err(403, "forbidden");
    // No token, an empty one, garbage, and one over 1024 bytes.
    p.get("/v1/me/usage").await.err(401, "invalid_key");
    p.get("/v1/me/credits").await.err(401, "invalid_key");
    for bad in [
        "",
        "tg_ut_",
        "nonsense",
        &format!("tg_ut_{}.x", "A".repeat(1100)),
    ] {
        me(&p, bad).await.err(401, "invalid_key");
    }
    // A token is no key.
    s.client_with(&good)
        .get("/v1/me/usage")
        .await
        .err(401, "invalid_key");
}

#[tokio::test(flavor = "multi_thread")]
async fn minting_checks_its_input() {
    let (s, c) = server().await;
    let t = c
        .post("/v1/user-tokens", json!({"userId": "alice"}))
        .await
        .ok();
    let expires = ts_secs(&t["expiresAt"]);
    let in_an_hour = Timestamp::now().as_second() + 3600;
    assert!((expires - in_an_hour).abs() <= 5, "{t}");
    c.post(
        "/v1/user-tokens",
        json!({"userId": "alice", "ttlSeconds": 86_400}),
    )
    .await
    .ok();
    for ttl in [0, 86_401] {
        c.post(
            "/v1/user-tokens",
            json!({"userId": "alice", "ttlSeconds": ttl}),
        )
        .await
        .invalid("ttlSeconds");
    }
    c.post("/v1/user-tokens", json!({"userId": "a".repeat(257)}))
        .await
        .invalid("userId");
    c.post("/v1/user-tokens", json!({"userId": "alice", "ttl": 5}))
        .await
        .invalid("ttl");
    // The longest user id makes a token the server takes back.
    let long = "é".repeat(128);
    let t = token(&c, &long).await;
    assert!(t.len() <= 1024, "{}", t.len());
    assert_eq!(me(&s.publishable(), &t).await.ok()["userId"], long.as_str());
    s.publishable()
        .post("/v1/user-tokens", json!({"userId": "alice"}))
        .await
        .err(403, "requires_secret_key");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_secret_is_made_once_and_kept() {
    let (mut s, c) = server().await;
    let first = c.get("/v1/settings").await.ok()["tokenSecret"].clone();
    let alice = token(&c, "alice").await;
    s.restart().await;
    let c = s.client();
    assert_eq!(c.get("/v1/settings").await.ok()["tokenSecret"], first);
    me(&s.publishable(), &alice).await.ok();
    // Read-only.
    c.call(
        Method::PATCH,
        "/v1/settings",
        Some(json!({"tokenSecret": "tg_ts_test_mine"})),
    )
    .await
    .invalid("tokenSecret");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_publishable_key_is_refused_on_every_secret_route() {
    let (s, c) = server().await;
    let doc = c.get("/openapi.json").await.ok();
    let any_key = ["get_plans", "get_plan", "me_usage", "me_credits", "capture"];
    let p = s.publishable();
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        if path.starts_with("/admin/") {
            continue;
        }
        for (method, op) in item.as_object().unwrap() {
            let keyed = op["security"].as_array().is_some_and(|s| !s.is_empty());
            let id = op["operationId"].as_str().unwrap_or_default();
            if !keyed || any_key.contains(&id) {
                continue;
            }
            let concrete = path.replace("{biller}", "stripe").replace(['{', '}'], "");
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let body = (method != Method::GET && method != Method::DELETE).then(|| json!({}));
            p.call(method.clone(), &concrete, body)
                .await
                .err(403, "requires_secret_key");
            checked += 1;
        }
    }
    assert!(
        checked >= 47,
        "only {checked} secret routes in /openapi.json"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn origins_an_environment_does_not_list_are_refused() {
    let (s, c) = server().await;
    let p = s.publishable();
    let alice = token(&c, "alice").await;
    let from = |origin: &'static str| [(TOKEN, alice.clone()), ("Origin", origin.to_string())];
    let call = |origin: &'static str| {
        let headers = from(origin);
        let p = p.clone();
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            p.request_with_headers(Method::GET, "/v1/me/usage", &h, None)
                .await
        }
    };
    // No origin listed yet: every browser call is refused, and says how to allow it.
    let refused = call("https://app.example.com").await;
    let e = refused.err(403, "forbidden");
    assert!(e["message"].as_str().unwrap().contains("corsOrigins"));
    assert!(refused.headers.get("access-control-allow-origin").is_none());
    // Bad origins are named.
    c.call(
        Method::PATCH,
        "/v1/settings",
        Some(json!({"corsOrigins": ["https://app.example.com", "app.example.com/"]})),
    )
    .await
    .invalid("corsOrigins[1]");
    let set = c
        .call(
            Method::PATCH,
            "/v1/settings",
            Some(json!({"corsOrigins": ["https://App.Example.com"]})),
        )
        .await
        .ok();
    assert_eq!(set["corsOrigins"], json!(["https://app.example.com"]));
    let allowed = call("https://app.example.com").await;
    assert_eq!(allowed.status, 200, "{}", allowed.text);
    assert_eq!(
        allowed.headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    let other = call("https://evil.example").await;
    other.err(403, "forbidden");
    assert!(other.headers.get("access-control-allow-origin").is_none());
    // An error from an allowed origin is readable by the page.
    let expired = p
        .request_with_headers(
            Method::GET,
            "/v1/me/usage",
            &[(TOKEN, "tg_ut_x.y"), ("Origin", "https://app.example.com")],
            None,
        )
        .await;
    expired.err(401, "invalid_key");
    assert_eq!(
        expired.headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    // Public plans for a pricing page, from the allowed origin.
    let plans = p
        .request_with_headers(
            Method::GET,
            "/v1/plans",
            &[("Origin", "https://app.example.com")],
            None,
        )
        .await
        .ok();
    assert!(plans.to_string().contains("images_daily"), "{plans}");
    // An unknown key's 401 is readable too: a widget can tell a wrong key from no server.
    let unknown = s
        .client_with("tg_pk_test_unknown")
        .request_with_headers(
            Method::GET,
            "/v1/me/usage",
            &[(TOKEN, &alice), ("Origin", "https://app.example.com")],
            None,
        )
        .await;
    unknown.err(401, "invalid_key");
    assert_eq!(
        unknown.headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    // The preflight answers any origin: the real call decides.
    let pre = s
        .anonymous()
        .request_with_headers(
            Method::OPTIONS,
            "/v1/me/usage",
            &[
                ("Origin", "https://evil.example"),
                ("Access-Control-Request-Method", "GET"),
                (
                    "Access-Control-Request-Headers",
                    "authorization, x-tollgate-user-token",
                ),
            ],
            None,
        )
        .await;
    assert_eq!(pre.status, 204);
    assert!(pre.headers["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .contains("x-tollgate-user-token"));
    // A secret key gets no CORS headers: a page cannot read its answers.
    let secret = c
        .request_with_headers(
            Method::GET,
            "/v1/users/alice/usage",
            &[("Origin", "https://app.example.com")],
            None,
        )
        .await;
    assert!(secret.headers.get("access-control-allow-origin").is_none());
    // `*` allows any origin.
    c.call(
        Method::PATCH,
        "/v1/settings",
        Some(json!({"corsOrigins": ["*"]})),
    )
    .await
    .ok();
    assert_eq!(call("https://evil.example").await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_widget_script_is_served() {
    let (s, _) = server().await;
    let r = s.anonymous().get("/widget.js").await;
    assert_eq!(r.status, 200);
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/javascript"));
    assert!(!r.text.is_empty());
}
