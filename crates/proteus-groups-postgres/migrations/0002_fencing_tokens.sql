-- Proteus consumer groups, migration 2: fencing tokens.
--
-- The highest coordinator-lease token a group was claimed or written with. Writes carrying a
-- lower one are refused, so a coordinator that lost its lease without noticing cannot
-- overwrite its successor's progress. Groups written before this migration start at 0.
ALTER TABLE groups ADD COLUMN fence bigint NOT NULL DEFAULT 0 CHECK (fence >= 0);
