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

-- Family relations (sql/012_relations.sql) link two people, a holder and a
-- relative. Both tables are distributed by `relative`: the relation is checked by (holder, relative),
-- and the relative reads who looked them up. Their keys gain `relative`, and the look-up log refers
-- to its relation by (relative, relation_id), so the foreign key stays within one person's shard; the
-- id keeps an index of its own for the statements that name a relation by id.
DO $$
BEGIN
    IF to_regclass('relation_lookups') IS NOT NULL THEN
        ALTER TABLE relation_lookups DROP CONSTRAINT relation_lookups_relation_id_fkey;
        ALTER TABLE relations DROP CONSTRAINT relations_pkey, ADD PRIMARY KEY (relative, id);
        CREATE INDEX relations_id_idx ON relations (id);
        ALTER TABLE relation_lookups DROP CONSTRAINT relation_lookups_pkey, ADD PRIMARY KEY (relative, id),
            ADD FOREIGN KEY (relative, relation_id) REFERENCES relations (relative, id);
    END IF;
END
$$;
