//! The job runner (not built yet — a later issue builds it).
//!
//! This crate will own the JetStream work-queue consumer that runs queued
//! jobs' code in a sandbox (namespaces, seccomp, cgroup limits), streams
//! live output on core NATS, and reports started / finished / attempt
//! failed back on NATS for the write side to turn into job commands. It
//! will hold no database credentials, so a sandbox escape cannot reach the
//! event store.
//!
//! Until then it exposes nothing: submitted jobs stay `queued`.
