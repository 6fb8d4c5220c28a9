//! The OpenAPI document: committed, generated and served alike; every
//! operation in it is served.

use crate::helpers::with_app;

/// The committed copy of the OpenAPI document (`docs/openapi/query-api.json`)
/// is what the code generates. `UPDATE_OPENAPI=1 cargo nextest run -p query-side openapi` rewrites it.
#[test]
fn the_committed_openapi_document_is_the_generated_one() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi/query-api.json");
    if let Err(difference) = service_kit::openapi::check_committed_copy(&query_side::openapi(), path) {
        panic!("{difference}");
    }
}

#[tokio::test]
async fn every_documented_operation_is_served_and_the_document_and_swagger_ui_are_too() {
    with_app(|app| async move {
        let served: serde_json::Value = app.get("/openapi.json").await.json().await.unwrap();
        assert_eq!(served, serde_json::to_value(query_side::openapi()).unwrap());
        let paths = served["paths"].as_object().unwrap();
        assert_eq!(paths.len(), 15, "{:?}", paths.keys()); // 2 of them the health routes (metrics: the ops address)
        for (path, operations) in paths {
            let concrete = path
                .replace("{order_id}", &uuid::Uuid::new_v4().to_string())
                .replace("{sku}", "SKU-1")
                .replace("{name}", "orders")
                .replace("{sequence}", "1")
                .replace("{stream_id}", "inventory-SKU-1");
            for method in operations.as_object().unwrap().keys() {
                let response = app
                    .client
                    .request(method.to_uppercase().parse().unwrap(), format!("{}{concrete}", app.base))
                    .send()
                    .await
                    .unwrap();
                let status = response.status();
                let body = response.text().await.unwrap();
                assert!(status != 405 && !body.contains("no such route"), "{method} {path}: {status} {body}");
            }
        }
        let docs = app.get("/docs/").await;
        assert_eq!(docs.status(), 200);
        assert!(docs.text().await.unwrap().contains("swagger-ui"));
    })
    .await;
}
