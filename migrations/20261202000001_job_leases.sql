-- Leases on running job attempts: the write side's operational state, not
-- the record (the log says which attempt runs). A claim takes a lease
-- before it starts the attempt; the executor's heartbeats renew it; a lease
-- not renewed in time fails the attempt as a lost worker. One row per
-- claimant, so a claim that lost the race removes only its own row.
CREATE TABLE job_leases
(
    job_id     uuid        NOT NULL,
    attempt    integer     NOT NULL,
    worker     text        NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (job_id, attempt, worker)
);

CREATE INDEX job_leases_by_expiry ON job_leases (expires_at);
CREATE INDEX job_leases_by_worker ON job_leases (worker);
