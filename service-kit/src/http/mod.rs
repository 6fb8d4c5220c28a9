//! HTTP pieces every API shares.

mod context;
mod cors;
mod problem;
mod serve;

pub use context::{layers, RequestContext, CORRELATION_ID, REQUEST_ID};
pub use cors::CorsConfig;
pub use problem::{not_found_route, FieldProblem, Problem, PROBLEM_JSON};
pub use serve::serve;
