//! `/v1/admin/dead-letters` against a real JetStream: dead letters listed a
//! page at a time (filtered by consumer), shown with headers and body, sent
//! again to their subject, discarded. (That a replay changes nothing in the
//! shop, the participants being idempotent, is the system tests'.)

use async_nats::jetstream::{self, stream};
use reqwest::StatusCode;
use serde_json::{json, Value};
use service_kit::nats::dead_letters::{CONSUMER, DELIVERIES, ERROR, SUBJECT};

use crate::helpers::{problem, with_app_env};

struct Streams {
    js: jetstream::Context,
    dead_letters: String,
    events: String,
    prefix: String,
}

async fn streams() -> Streams {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| service_kit::config::DEFAULT_NATS_URL.into());
    let js = jetstream::new(async_nats::connect(url.as_str()).await.expect("NATS must be running (see README)"));
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let (dead_letters, events, prefix) = (format!("QDLQ_{id}"), format!("QEVENTS_{id}"), format!("q{id}"));
    for (name, subject) in [(&dead_letters, format!("{prefix}_deadletter.>")), (&events, format!("{prefix}.>"))] {
        js.create_stream(stream::Config { name: name.clone(), subjects: vec![subject], ..Default::default() })
            .await
            .unwrap();
    }
    Streams { js, dead_letters, events, prefix }
}

impl Streams {
    /// Dead-letters `body` as consumer `consumer` would, from `<prefix>.order.<event_type>`.
    async fn give_up(&self, consumer: &str, event_type: &str, body: &[u8]) {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Correlation-Id", "corr-7");
        headers.insert(async_nats::header::NATS_MESSAGE_ID, uuid::Uuid::new_v4().to_string().as_str());
        headers.insert(ERROR, "the order does not exist");
        headers.insert(CONSUMER, consumer);
        headers.insert(SUBJECT, format!("{}.order.{event_type}", self.prefix).as_str());
        headers.insert(DELIVERIES, "5");
        let subject = format!("{}_deadletter.{consumer}", self.prefix);
        self.js.publish_with_headers(subject, headers, body.to_vec().into()).await.unwrap().await.unwrap();
    }

    async fn cleanup(&self) {
        for name in [&self.dead_letters, &self.events] {
            let _ = self.js.delete_stream(name).await;
        }
    }
}

#[tokio::test]
async fn dead_letters_are_listed_shown_replayed_and_discarded() {
    let streams = streams().await;
    let env = [("SAGA_DEAD_LETTER_STREAM", streams.dead_letters.as_str())];
    let streams = &streams;
    with_app_env(&env, |app| async move {
        let empty: Value = app.get("/v1/admin/dead-letters").await.json().await.unwrap();
        assert_eq!(empty, json!({"items": [], "next": null}));
        streams.give_up("inventory-OrderPlaced", "OrderPlaced", br#"{"event_id": "e-1"}"#).await;
        streams.give_up("payment-OrderCancelled", "OrderCancelled", br#"{"event_id": "e-2"}"#).await;
        streams.give_up("inventory-OrderPlaced", "OrderPlaced", b"\xff not json").await;

        let first: Value = app.get("/v1/admin/dead-letters?limit=2").await.json().await.unwrap();
        let sequences: Vec<u64> =
            first["items"].as_array().unwrap().iter().map(|i| i["sequence"].as_u64().unwrap()).collect();
        assert_eq!(sequences, [1, 2]);
        assert_eq!(first["next"], 2);
        assert_eq!(first["items"][0]["consumer"], "inventory-OrderPlaced");
        assert_eq!(first["items"][0]["error"], "the order does not exist");
        assert_eq!(first["items"][0]["deliveries"], 5);
        assert_eq!(first["items"][0]["correlation_id"], "corr-7");
        let rest: Value = app.get("/v1/admin/dead-letters?limit=2&after=2").await.json().await.unwrap();
        assert_eq!((rest["items"][0]["sequence"].as_u64(), &rest["next"]), (Some(3), &Value::Null));
        let inventory: Value =
            app.get("/v1/admin/dead-letters?consumer=inventory-OrderPlaced").await.json().await.unwrap();
        assert_eq!(inventory["items"].as_array().unwrap().len(), 2);

        let shown: Value = app.get("/v1/admin/dead-letters/1").await.json().await.unwrap();
        assert_eq!(shown["body"], json!({"event_id": "e-1"}));
        assert_eq!(shown["headers"][CONSUMER], "inventory-OrderPlaced");
        let garbled: Value = app.get("/v1/admin/dead-letters/3").await.json().await.unwrap();
        assert_eq!((&garbled["body"], garbled["body_base64"].as_str()), (&Value::Null, Some("/yBub3QganNvbg==")));

        // Replayed: on its subject again with its headers, no longer a dead letter.
        let replay = app.client.post(format!("{}/v1/admin/dead-letters/1/replay", app.base)).send().await.unwrap();
        assert_eq!(replay.status(), StatusCode::ACCEPTED);
        let replayed: Value = replay.json().await.unwrap();
        assert_eq!(replayed["subject"], format!("{}.order.OrderPlaced", streams.prefix));
        let events = streams.js.get_stream(&streams.events).await.unwrap();
        let copy = events.get_raw_message(replayed["stored_as"].as_u64().unwrap()).await.unwrap();
        assert_eq!(copy.payload.as_ref(), br#"{"event_id": "e-1"}"#);
        assert_eq!(copy.headers.get("Correlation-Id").unwrap().as_str(), "corr-7");
        assert!(copy.headers.get(ERROR).is_none(), "the dead-letter headers stay behind");
        problem(app.get("/v1/admin/dead-letters/1").await, StatusCode::NOT_FOUND).await;
        let again = app.client.post(format!("{}/v1/admin/dead-letters/1/replay", app.base)).send().await.unwrap();
        problem(again, StatusCode::NOT_FOUND).await;

        // Discarded.
        let discard = app.client.delete(format!("{}/v1/admin/dead-letters/3", app.base)).send().await.unwrap();
        assert_eq!(discard.status(), StatusCode::NO_CONTENT);
        let discard = app.client.delete(format!("{}/v1/admin/dead-letters/3", app.base)).send().await.unwrap();
        problem(discard, StatusCode::NOT_FOUND).await;

        // A filter is an object: an array (which serde would read field by field) replays nothing.
        for body in [json!([null]), json!(["payment-OrderCancelled"]), json!("x"), json!({"consumer": 7})] {
            let refused =
                app.client.post(format!("{}/v1/admin/dead-letters/replay", app.base)).json(&body).send().await.unwrap();
            problem(refused, StatusCode::BAD_REQUEST).await;
        }

        // The rest, filtered by consumer, in one request.
        let all = app
            .client
            .post(format!("{}/v1/admin/dead-letters/replay", app.base))
            .json(&json!({"consumer": "payment-OrderCancelled"}))
            .send()
            .await
            .unwrap();
        assert_eq!(all.status(), StatusCode::ACCEPTED);
        let all: Value = all.json().await.unwrap();
        assert_eq!(all["replayed"].as_array().unwrap().len(), 1);
        let left: Value = app.get("/v1/admin/dead-letters").await.json().await.unwrap();
        assert_eq!(left["items"], json!([]));

        problem(app.get("/v1/admin/dead-letters?consumer=a.b").await, StatusCode::BAD_REQUEST).await;
        problem(app.get("/v1/admin/dead-letters?limit=0").await, StatusCode::BAD_REQUEST).await;
        problem(app.get("/v1/admin/dead-letters/x").await, StatusCode::BAD_REQUEST).await;
    })
    .await;
    streams.cleanup().await;
}

#[tokio::test]
async fn without_nats_the_dead_letters_are_unavailable_and_the_rest_answers() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("nats://127.0.0.1:{closed}");
    with_app_env(&[("NATS_URL", url.as_str())], |app| async move {
        let unavailable = app.get("/v1/admin/dead-letters").await;
        assert_eq!(unavailable.headers()["retry-after"], "1");
        problem(unavailable, StatusCode::SERVICE_UNAVAILABLE).await;
        assert_eq!(app.get("/health/ready").await.status(), StatusCode::NO_CONTENT, "readiness never asks NATS");
        assert_eq!(app.get("/v1/admin/projections").await.status(), StatusCode::OK);
    })
    .await;
}
