-- Proteus read models, migration 1: the tables of every projection.
--
-- Applied by the migration runner inside one transaction holding the schema's advisory lock,
-- with `search_path` set to the store's schema, so every name below lives in that schema.
--
-- Names sort by byte (COLLATE "C") as in every other Proteus store. Document keys are any
-- string (a NUL character included), so they are stored as their UTF-8 bytes (`bytea`), whose
-- order is the byte order queries promise. Documents and list items are `json`, not `jsonb`:
-- the exact text written (so they read back equal, keys in the order written) and any JSON
-- string, where `jsonb` refuses `\u0000`.

-- Every projection's record: its definition and run state, as written.
CREATE TABLE projections (
    name   text COLLATE "C" PRIMARY KEY,
    record json NOT NULL
);

-- One row per projection, created with it. `checkpoint` is NULL before the first commit and
-- after a reset. Commits lock the row (SELECT ... FOR UPDATE) before writing anything, so the
-- commits of one projection are serialised and the checkpoint never moves back.
CREATE TABLE checkpoints (
    name       text COLLATE "C" PRIMARY KEY,
    checkpoint json
);

-- The documents of every projection that keeps documents.
CREATE TABLE docs (
    projection text  COLLATE "C" NOT NULL,
    key        bytea NOT NULL,
    doc        json  NOT NULL,
    PRIMARY KEY (projection, key)
);

-- The lists of every projection that keeps lists: one row per kept item. Sequences count
-- from 0 in the order appended, so a list's count is its last sequence + 1, and an append
-- reads one index entry whatever the list's length.
CREATE TABLE list_items (
    projection text   COLLATE "C" NOT NULL,
    key        bytea  NOT NULL,
    seq        bigint NOT NULL CHECK (seq >= 0),
    item       json   NOT NULL,
    PRIMARY KEY (projection, key, seq)
);
