//! Black-box: sign a sample as the biller would, verify it, parse it — the path the server takes.

use serde_json::json;
use tollgate_billers::samples;
use tollgate_billers::{
    parse_polar, parse_stripe, sign_standard, sign_stripe, verify_standard, verify_stripe,
    SignatureError, Sources,
};
use tollgate_core::biller::{BillerFact, OwnerHint};

const NOW: i64 = 1_790_812_800;

#[test]
fn stripe_subscription_signed_verified_parsed() {
    let event = samples::stripe_subscription(
        "evt_rt",
        NOW,
        "sub_rt",
        "cus_rt",
        Some("u_rt"),
        "price_pro",
        "active",
        (NOW, NOW + 2_592_000),
        true,
    );
    let body = samples::body(&event);
    let secret = "whsec_roundtrip".to_string();
    let header = sign_stripe(&body, &secret, NOW);
    assert_eq!(
        verify_stripe(&body, &header, std::slice::from_ref(&secret), NOW + 5, 300),
        Ok(())
    );
    let mut tampered = body.clone();
    tampered.extend_from_slice(b" ");
    assert_eq!(
        verify_stripe(&tampered, &header, &[secret], NOW, 300),
        Err(SignatureError::NoMatch)
    );
    let parsed = parse_stripe(&body, &Sources::stripe_default()).unwrap();
    assert_eq!(parsed.event_id, "evt_rt");
    match parsed.fact {
        BillerFact::Subscription(s) => {
            assert_eq!(s.subscription_id, "sub_rt");
            assert_eq!(s.owner, Some(OwnerHint::User("u_rt".into())));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn polar_order_signed_both_ways_verified_parsed() {
    let event = samples::polar_order_paid(
        NOW,
        "ord_rt",
        "cus_rt",
        Some("u_rt"),
        "prod_pack",
        "purchase",
        None,
    );
    let body = samples::body(&event);
    let secret = format!("whsec_{}", "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODk=");
    let id = "msg_rt";
    for legacy in [false, true] {
        let sig = sign_standard(id, NOW, &body, &secret, legacy);
        assert_eq!(
            verify_standard(
                &body,
                id,
                &NOW.to_string(),
                &sig,
                std::slice::from_ref(&secret),
                NOW,
                300
            ),
            Ok(()),
            "legacy {legacy}"
        );
    }
    let parsed = parse_polar(&body, id, &Sources::polar_default()).unwrap();
    assert_eq!(parsed.event_id, id);
    match parsed.fact {
        BillerFact::Purchase(p) => {
            assert_eq!(p.payment_ref, "ord_rt");
            assert_eq!(p.price_ids, vec!["prod_pack".to_string()]);
            assert_eq!(p.owner, Some(OwnerHint::User("u_rt".into())));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn with_field_sets_nested_and_indexed_values() {
    let event = samples::stripe_subscription(
        "e",
        NOW,
        "s",
        "c",
        None,
        "p",
        "active",
        (NOW, NOW + 1),
        true,
    );
    let event = samples::with_field(event, "/data/object/items/data/0/quantity", json!(4));
    let event = samples::with_field(event, "/data/object/metadata/account_id", json!("acc"));
    let event = samples::with_field(event, "/data/object/items/data/9/quantity", json!(5));
    assert_eq!(event["data"]["object"]["items"]["data"][0]["quantity"], 4);
    assert_eq!(event["data"]["object"]["metadata"]["account_id"], "acc");
    assert_eq!(
        event["data"]["object"]["items"]["data"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
}
