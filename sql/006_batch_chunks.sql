-- Batches processed in bounded chunks, and given up after a bounded number of attempts.
--
-- Merging, listing the touched subjects and deleting staging each walk a batch's staging rows a range of
-- row numbers at a time, so no single statement grows with the batch (every statement has a timeout).
-- The (batch_id, row_no) index serves those ranges and everything the (batch_id) index served; rows
-- are appended in row order, so it costs a COPY no more than the index it replaces.
--
-- `attempts` counts the processing attempts of a batch; past a limit it is marked failed with the last
-- error, instead of being retried forever.
ALTER TABLE batches ADD COLUMN attempts integer NOT NULL DEFAULT 0;

DROP INDEX staging_population_batch_idx;
DROP INDEX staging_vaccination_batch_idx;
DROP INDEX staging_test_batch_idx;
DROP INDEX staging_travel_batch_idx;
DROP INDEX staging_designation_batch_idx;
DROP INDEX staging_risk_area_batch_idx;
CREATE INDEX staging_population_batch_row_idx ON staging_population (batch_id, row_no);
CREATE INDEX staging_vaccination_batch_row_idx ON staging_vaccination (batch_id, row_no);
CREATE INDEX staging_test_batch_row_idx ON staging_test (batch_id, row_no);
CREATE INDEX staging_travel_batch_row_idx ON staging_travel (batch_id, row_no);
CREATE INDEX staging_designation_batch_row_idx ON staging_designation (batch_id, row_no);
CREATE INDEX staging_risk_area_batch_row_idx ON staging_risk_area (batch_id, row_no);
