//! Every projector, applied directly (no NATS): the same event delivered
//! twice changes nothing the second time.
