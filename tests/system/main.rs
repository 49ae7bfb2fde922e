//! System tests: real Postgres, NATS and Redis; one fresh database and one
//! namespace per test; the whole stack on port 0, driven over HTTP.

// The harness serves every module; not each module uses each helper.
#[allow(dead_code)]
mod support;

mod auth;
mod convergence;
mod errors;
mod jobs;
mod log;
mod notifications;
mod outages;
mod pipeline;
mod projectors;
mod queries;
mod rbac;
mod realtime;
mod smoke;
mod write_side;
