-- Proteus key-value metadata, migration 1. Applied inside one transaction under the schema's
-- advisory lock, with `search_path` set to the store's schema.

-- One row per key of a namespace. `bytea` compares bytewise (memcmp, then length), so the
-- primary key's index orders a namespace's keys exactly as the port's scans do. The port's
-- limits (namespace and key lengths, value sizes) are checked by the adapter, not here, so
-- they can change without a migration.
CREATE TABLE kv (
    namespace text COLLATE "C" NOT NULL,
    key       bytea            NOT NULL CHECK (octet_length(key) > 0),
    value     bytea            NOT NULL,
    PRIMARY KEY (namespace, key)
);
