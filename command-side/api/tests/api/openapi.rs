//! The OpenAPI document: committed, generated and served alike; every
//! operation in it is served.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::with_app;

/// The committed copy of the OpenAPI document (`docs/openapi/command-api.json`)
/// is what the code generates, so API changes show in review.
/// `UPDATE_OPENAPI=1 cargo nextest run -p command-api openapi` rewrites it.
#[test]
fn the_committed_openapi_document_is_the_generated_one() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi/command-api.json");
    if let Err(difference) = service_kit::openapi::check_committed_copy(&command_api::openapi(), path) {
        panic!("{difference}");
    }
}

#[tokio::test]
async fn every_documented_operation_is_served_and_the_document_and_swagger_ui_are_too() {
    with_app(|app| async move {
        let served: Value =
            app.client.get(format!("{}/openapi.json", app.base)).send().await.unwrap().json().await.unwrap();
        assert_eq!(served, serde_json::to_value(command_api::openapi()).unwrap());
        assert!(served["openapi"].as_str().unwrap().starts_with("3.1"));
        let paths = served["paths"].as_object().unwrap();
        assert_eq!(paths.len(), 10, "{:?}", paths.keys()); // 2 of them the health routes (metrics: the ops address)
        for (path, operations) in paths {
            let concrete = path
                .replace("{order_id}", &uuid::Uuid::new_v4().to_string())
                .replace("{sku}", "SKU-1")
                .replace("{customer_id}", "c-1")
                .replace("{id}", &uuid::Uuid::new_v4().to_string());
            for method in operations.as_object().unwrap().keys() {
                let response = app
                    .client
                    .request(method.to_uppercase().parse().unwrap(), format!("{}{concrete}", app.base))
                    .json(&json!({}))
                    .send()
                    .await
                    .unwrap();
                let status = response.status();
                let body = response.text().await.unwrap();
                assert!(
                    status != StatusCode::METHOD_NOT_ALLOWED && !body.contains("no such route"),
                    "{method} {path}: {status} {body}"
                );
            }
        }
        let docs = app.client.get(format!("{}/docs/", app.base)).send().await.unwrap();
        assert_eq!(docs.status(), StatusCode::OK);
        assert!(docs.text().await.unwrap().contains("swagger-ui"));
    })
    .await;
}
