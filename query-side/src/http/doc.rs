//! The OpenAPI document of the query API: its frame (title, security
//! scheme, shared headers). The operations come from the `#[utoipa::path]`
//! beside each handler, registered together with their routes, so the
//! document cannot list a route that does not exist or miss one that does.

use service_kit::auth::BearerSecurity;
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(title = "Order system: query API", version = "1",
         description = "Read models of orders, inventory and payments, and their administration. Errors are RFC 9457 problem+json. See shared/API.md."),
    modifiers(&BearerSecurity),
    components(schemas(service_kit::http::Problem, service_kit::http::FieldProblem)),
    tags((name = "orders", description = "Orders"), (name = "inventory", description = "Stock"),
         (name = "payments", description = "Payments"), (name = "admin", description = "Projections and their rebuilds"))
)]
pub(crate) struct ApiDoc;
