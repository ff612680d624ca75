//! Store outcomes → wire bodies.
//!
//! The idempotent commands (reserve, track) hand the store a plain `fn` that renders their
//! outcome, so a replay answers the very bytes of the first answer; the fresh answer is rendered
//! by the same function.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tollgate_api as wire;
use tollgate_api::format_timestamp;
use tollgate_store::{
    CheckOutcome, CommitOutcome, CreditsDrawn, ExtendOutcome, LimitState, MatchStatus, PackBalance,
    ReleaseOutcome, ReservationStatus, ReservationView, ReserveOutcome, TrackOutcome,
};

/// A response whose body is already JSON text.
pub fn json_response(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Wire bodies are plain data (strings, integers, lists); encoding them cannot fail.
fn to_json<T: serde::Serialize>(body: &T) -> String {
    serde_json::to_string(body).expect("wire bodies are plain data and always encode")
}

pub fn limit_state(l: &LimitState) -> wire::LimitState {
    wire::LimitState {
        limit_id: l.limit_id.clone(),
        label: l.label.clone(),
        unit: l.unit.clone(),
        kind: l.kind.into(),
        scope: l.scope.into(),
        enforcement: l.enforcement.into(),
        quota: l.quota,
        used: l.used,
        reserved: l.reserved,
        remaining: l.remaining,
        window_start: l.window_start.map(format_timestamp),
        resets_at: l.resets_at.map(format_timestamp),
    }
}

pub fn limit_states(limits: &[LimitState]) -> Vec<wire::LimitState> {
    limits.iter().map(limit_state).collect()
}

/// The credits a reserve holds (or a check would), each grant's part in spend order.
pub fn credits_held(c: &CreditsDrawn) -> wire::CreditsHeld {
    wire::CreditsHeld {
        held: c.held,
        grants: c
            .grants
            .iter()
            .map(|(grant_id, quantity)| wire::CreditDraw {
                grant_id: grant_id.clone(),
                quantity: *quantity,
            })
            .collect(),
    }
}

/// Balances per pack item, as usage and credits answers show them.
pub fn pack_balances(packs: &[PackBalance]) -> Vec<wire::CreditBalance> {
    packs
        .iter()
        .map(|p| wire::CreditBalance {
            pack_id: p.pack_id.clone(),
            item_id: p.item_id.clone(),
            unit: p.unit.clone(),
            available: p.available,
            held: p.held,
        })
        .collect()
}

fn reasons(reasons: &[tollgate_core::decision::DenyReason]) -> Vec<wire::DenyReason> {
    reasons.iter().map(|&r| r.into()).collect()
}

pub fn reservation_status(s: ReservationStatus) -> wire::ReservationStatus {
    match s {
        ReservationStatus::Pending => wire::ReservationStatus::Pending,
        ReservationStatus::Committed => wire::ReservationStatus::Committed,
        ReservationStatus::Released => wire::ReservationStatus::Released,
        ReservationStatus::Expired => wire::ReservationStatus::Expired,
    }
}

pub fn reserve_body(o: &ReserveOutcome) -> String {
    to_json(&wire::ReserveResponse {
        allowed: o.allowed,
        reservation_id: o.reservation_id.clone(),
        expires_at: o.expires_at.map(format_timestamp),
        plan_id: o.plan_id.clone(),
        reasons: reasons(&o.reasons),
        denied_by: o.denied_by.clone(),
        limits: limit_states(&o.limits),
        credits: credits_held(&o.credits),
    })
}

pub fn track_body(o: &TrackOutcome) -> String {
    to_json(&wire::TrackResponse {
        event_id: o.event_id.clone(),
        recorded: o.recorded,
        allowed: o.allowed,
        reasons: reasons(&o.reasons),
        match_status: match o.match_status {
            MatchStatus::Matched => wire::MatchStatus::Matched,
            MatchStatus::Unmatched => wire::MatchStatus::Unmatched,
            MatchStatus::NoSubscription => wire::MatchStatus::NoSubscription,
        },
        overage: o.overage,
        plan_id: o.plan_id.clone(),
        limits: limit_states(&o.limits),
        credits_used: o.credits_used,
    })
}

pub fn check_response(o: &CheckOutcome) -> wire::CheckResponse {
    wire::CheckResponse {
        allowed: o.allowed,
        plan_id: o.plan_id.clone(),
        reasons: reasons(&o.reasons),
        denied_by: o.denied_by.clone(),
        limits: limit_states(&o.limits),
        credits: credits_held(&o.credits),
    }
}

pub fn commit_response(o: &CommitOutcome) -> wire::CommitResponse {
    wire::CommitResponse {
        reservation_id: o.reservation_id.clone(),
        status: wire::ReservationStatus::Committed,
        event_id: o.event_id.clone(),
        quantity: o.quantity,
        overage: o.overage,
        late: o.late,
        limits: limit_states(&o.limits),
        credits_used: o.credits_used,
    }
}

pub fn release_response(o: &ReleaseOutcome) -> wire::ReleaseResponse {
    wire::ReleaseResponse {
        reservation_id: o.reservation_id.clone(),
        status: wire::ReservationStatus::Released,
        limits: limit_states(&o.limits),
    }
}

pub fn extend_response(o: &ExtendOutcome) -> wire::ExtendResponse {
    wire::ExtendResponse {
        reservation_id: o.reservation_id.clone(),
        status: wire::ReservationStatus::Pending,
        expires_at: format_timestamp(o.expires_at),
    }
}

pub fn reservation_response(v: &ReservationView) -> wire::ReservationResponse {
    wire::ReservationResponse {
        reservation_id: v.reservation_id.clone(),
        status: reservation_status(v.status),
        user_id: v.user_id.clone(),
        event: v.event.clone(),
        quantity: v.quantity,
        metadata: v.metadata.to_map(),
        created_at: format_timestamp(v.created_at),
        expires_at: format_timestamp(v.expires_at),
        event_id: v.event_id.clone(),
    }
}
