-- Read-model rows that are rewritten often leave room on their page, so an
-- update that touches no indexed column stays on the page (a HOT update)
-- instead of adding index entries: files on every save, projects on every
-- project event, jobs on every state change, activity counters.
ALTER TABLE read.files SET (fillfactor = 70);
ALTER TABLE read.projects SET (fillfactor = 70);
ALTER TABLE read.jobs SET (fillfactor = 70);
ALTER TABLE read.activity_daily SET (fillfactor = 70);
