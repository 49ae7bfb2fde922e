//! The read side (not built yet — the pipeline issue builds it).
//!
//! This crate will own the JetStream consumers that turn the sequenced log
//! into read models: tables in the Postgres schema `read` (projects,
//! members, workspaces, files, jobs, activity) and hot state in Redis (job
//! status snapshots, per-project member sets), each update written with
//! its checkpoint in one transaction so a redelivery never applies twice,
//! plus `tandem replay` to rebuild a model from position 0.
//!
//! Until then it exposes nothing: the gateway serves no queries, and no
//! code may pretend to read a model that does not exist.
