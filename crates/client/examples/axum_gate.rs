//! An axum handler gating a (fake) image generation with Tollgate.
//!
//! ```sh
//! export TOLLGATE_URL=http://127.0.0.1:7070 TOLLGATE_KEY=tg_sk_test_...
//! cargo run -p tollgate-client --example axum_gate      # listens on 127.0.0.1:3001
//! curl -s -X POST localhost:3001/generate -H 'x-user-id: u_1' -d 'a red fox'
//! ```
//!
//! `200` with the image while the user has quota, `429` with the limits once they are out,
//! `502` when the generation fails (its reservation is released, so it costs nothing).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use tollgate_client::{ReservationError, ReserveRequest, Tollgate};

async fn generate(
    State(tollgate): State<Tollgate>,
    headers: HeaderMap,
    prompt: String,
) -> (StatusCode, Json<Value>) {
    let Some(user) = headers.get("x-user-id").and_then(|v| v.to_str().ok()) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "x-user-id header missing"})),
        );
    };
    let request = ReserveRequest {
        user_id: user.to_string(),
        event: "image.render".into(),
        ..ReserveRequest::default()
    };
    let outcome = tollgate
        .with_reservation(request, |_reservation| async move {
            // The paid call goes here; an Err releases the hold.
            if prompt.contains("fail") {
                return Err("the image provider failed".to_string());
            }
            Ok((format!("<image of {prompt}>"), None))
        })
        .await;
    match outcome {
        Ok(image) => (StatusCode::OK, Json(json!({ "image": image }))),
        Err(ReservationError::Denied(answer)) => (
            StatusCode::TOO_MANY_REQUESTS,
            Json(json!({ "error": "over quota", "limits": answer.limits })),
        ),
        Err(ReservationError::Work(e)) => (StatusCode::BAD_GATEWAY, Json(json!({ "error": e }))),
        Err(ReservationError::Tollgate(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": e.to_string() })),
        ),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("TOLLGATE_URL").unwrap_or_else(|_| "http://127.0.0.1:7070".into());
    let key = std::env::var("TOLLGATE_KEY").map_err(|_| "set TOLLGATE_KEY to a secret key")?;
    let app = Router::new()
        .route("/generate", post(generate))
        .with_state(Tollgate::new(url, key)?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3001").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
