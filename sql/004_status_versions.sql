-- Status versions: statuses only move forward.
--
-- A subject's `revision` is bumped in the same transaction as any change to its inputs (records,
-- overrides, its masked name); `input_revisions.risk_areas` is bumped with any change to risk areas,
-- which are everyone's input. A status computed from one snapshot carries
-- version = subjects.revision + risk_areas revision: both only grow, so a computation from a later
-- snapshot never has a smaller version, and two computations with one version read the same inputs.
-- Ties go to the later computed_at (the same inputs, later in time). Postgres and Redis both refuse
-- to replace a status with an older one.
ALTER TABLE subjects ADD COLUMN revision bigint NOT NULL DEFAULT 0;
ALTER TABLE statuses ADD COLUMN version bigint NOT NULL DEFAULT 0;

CREATE TABLE input_revisions (
    name  text   PRIMARY KEY,
    value bigint NOT NULL DEFAULT 0
);
INSERT INTO input_revisions (name) VALUES ('risk_areas');
