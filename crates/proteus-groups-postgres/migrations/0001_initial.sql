-- Proteus consumer groups, migration 1. Applied inside one transaction under the schema's
-- advisory lock, with `search_path` set to the store's schema.

-- One row per group: its settings as JSON (the domain's `GroupConfig`).
CREATE TABLE groups (
    topic      text   NOT NULL,
    grp        text   NOT NULL,
    config     json   NOT NULL,
    created_ms bigint NOT NULL,
    PRIMARY KEY (topic, grp)
);

-- One row per partition of a group: its progress as JSON (the domain's `PartitionProgress`).
CREATE TABLE progress (
    topic     text    NOT NULL,
    grp       text    NOT NULL,
    partition integer NOT NULL CHECK (partition >= 0),
    progress  json    NOT NULL,
    PRIMARY KEY (topic, grp, partition),
    FOREIGN KEY (topic, grp) REFERENCES groups (topic, grp) ON DELETE CASCADE
);
