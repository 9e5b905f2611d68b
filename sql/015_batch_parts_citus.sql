-- Batch recompute split into subject ranges, and person-keyed tables keyed for Citus.
--
-- Parts: the merge of a batch (one transaction, once) also writes its parts, each a range of pseudonyms
-- [lo, hi) (hi NULL: to the end). Worker processes claim a part with a session-level advisory lock
-- (app/ingest/parts.py), recompute the batch's subjects in that range and set done_at; a worker that
-- dies loses its lock with its connection, and another takes the part over. Recomputing a part twice
-- changes nothing (the write path's version guard), merging twice cannot happen (merged_at, under the
-- batch's row lock). The batch is done once every part is.
CREATE TABLE batch_parts (
    batch_id bigint      NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
    part     smallint    NOT NULL,
    lo       bytea       NOT NULL,
    hi       bytea,
    subjects integer,
    done_at  timestamptz,
    done_by  text,          -- host:pid of the process that recomputed it
    PRIMARY KEY (batch_id, part)
);

-- Citus (README, "A national deployment"): a distributed table's primary key must hold its distribution
-- column. Declarations and the record history are per person and grow with the population, so they are
-- distributed by pseudonym too: their keys gain it (nothing refers to them by id alone).
ALTER TABLE declarations DROP CONSTRAINT declarations_pkey, ADD PRIMARY KEY (pseudonym, id);
ALTER TABLE record_history DROP CONSTRAINT record_history_pkey, ADD PRIMARY KEY (pseudonym, id);
