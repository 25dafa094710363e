-- Baton ledger schema, SQLite. See ledger/DESIGN.md.
-- Every table is append-only: the triggers below abort any UPDATE or DELETE.

CREATE TABLE entries (
    seq            INTEGER PRIMARY KEY CHECK (seq >= 1),
    kind           TEXT    NOT NULL,
    interval_start INTEGER NULL,
    body           BLOB    NOT NULL,
    prev_hash      BLOB    NOT NULL CHECK (length(prev_hash) = 32),
    hash           BLOB    NOT NULL CHECK (length(hash) = 32)
) STRICT;

CREATE INDEX entries_kind_interval ON entries (kind, interval_start);

-- Query index over settlement bodies; amounts are canonical decimal strings (scale 2).
CREATE TABLE postings (
    seq            INTEGER NOT NULL REFERENCES entries (seq),
    idx            INTEGER NOT NULL,
    account        TEXT    NOT NULL,
    amount         TEXT    NOT NULL,
    interval_start INTEGER NOT NULL,
    PRIMARY KEY (seq, idx)
) STRICT;

CREATE INDEX postings_account ON postings (account);

CREATE TABLE checkpoints (
    size       INTEGER PRIMARY KEY CHECK (size >= 1),
    root_hash  BLOB    NOT NULL CHECK (length(root_hash) = 32),
    signature  BLOB    NOT NULL CHECK (length(signature) = 64),
    key_id     BLOB    NOT NULL CHECK (length(key_id) = 4),
    origin     TEXT    NOT NULL,
    -- Writer's cache of the Merkle frontier at this size; untrusted, the verifier ignores it.
    frontier   BLOB    NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;

CREATE TRIGGER entries_no_update BEFORE UPDATE ON entries
BEGIN SELECT RAISE(ABORT, 'ledger is append-only: UPDATE on entries is forbidden'); END;
CREATE TRIGGER entries_no_delete BEFORE DELETE ON entries
BEGIN SELECT RAISE(ABORT, 'ledger is append-only: DELETE on entries is forbidden'); END;
CREATE TRIGGER postings_no_update BEFORE UPDATE ON postings
BEGIN SELECT RAISE(ABORT, 'ledger is append-only: UPDATE on postings is forbidden'); END;
CREATE TRIGGER postings_no_delete BEFORE DELETE ON postings
BEGIN SELECT RAISE(ABORT, 'ledger is append-only: DELETE on postings is forbidden'); END;
CREATE TRIGGER checkpoints_no_update BEFORE UPDATE ON checkpoints
BEGIN SELECT RAISE(ABORT, 'ledger is append-only: UPDATE on checkpoints is forbidden'); END;
CREATE TRIGGER checkpoints_no_delete BEFORE DELETE ON checkpoints
BEGIN SELECT RAISE(ABORT, 'ledger is append-only: DELETE on checkpoints is forbidden'); END;
