//! The OpenAPI document of the query API: its frame (title, security
//! scheme, shared headers). The operations come from the `#[utoipa::path]`
//! beside each handler, registered together with their routes, so the
//! document cannot list a route that does not exist or miss one that does.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "Order system: query API", version = "1",
         description = "Read models of orders, inventory and payments, and their administration. Errors are RFC 9457 problem+json. See shared/API.md."),
    modifiers(&BearerAuth),
    components(schemas(service_kit::http::Problem, service_kit::http::FieldProblem)),
    tags((name = "orders", description = "Orders"), (name = "inventory", description = "Stock"),
         (name = "payments", description = "Payments"), (name = "admin", description = "Projections and their rebuilds"))
)]
pub(crate) struct ApiDoc;

/// `Authorization: Bearer <jwt>`; scopes per operation.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let scheme = Http::builder().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build();
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}
