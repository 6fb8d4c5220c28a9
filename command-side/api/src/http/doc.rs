//! The OpenAPI document of the command API: its frame (title, security
//! scheme, shared headers). The operations come from the `#[utoipa::path]`
//! beside each handler, registered together with their routes, so the
//! document cannot list a route that does not exist or miss one that does.

use service_kit::auth::BearerSecurity;
use utoipa::{IntoParams, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "Order system: command API", version = "1",
         description = "Commands on orders and inventory; webhook endpoints. Errors are RFC 9457 problem+json. See shared/API.md."),
    modifiers(&BearerSecurity),
    components(schemas(service_kit::http::Problem, service_kit::http::FieldProblem)),
    tags((name = "orders", description = "Place, cancel and ship orders"), (name = "inventory", description = "Receive stock"),
         (name = "customers", description = "A customer's personal data: erasure"),
         (name = "webhooks", description = "Merchants' webhook endpoints and their deliveries"))
)]
pub(crate) struct ApiDoc;

/// `Idempotency-Key`: a retry with the same key and body answers as the first time.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // read by the handlers from the headers; this only documents it
pub(crate) struct IdempotencyKey {
    /// 1 to 255 visible ASCII characters; remembered for `IDEMPOTENCY_KEY_TTL`.
    #[param(rename = "Idempotency-Key", required = false, pattern = "^[\\x21-\\x7e]{1,255}$")]
    idempotency_key: String,
}

/// `If-Match`: the stream version the client read (the `ETag` of an earlier answer).
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub(crate) struct IfMatch {
    /// A stream version, quoted or not: `"3"` or `3`.
    #[param(rename = "If-Match", required = false, pattern = "^(\"[0-9]{1,19}\"|[0-9]{1,19})$")]
    if_match: String,
}
