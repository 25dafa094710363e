-- Baton ledger schema, PostgreSQL. See ledger/DESIGN.md.
-- Every table is append-only: triggers raise on UPDATE, DELETE and TRUNCATE, and those
-- privileges are revoked from PUBLIC. Production runs the server as a non-owner role granted
-- only SELECT and INSERT (plus UPDATE on ledger_head, which SELECT ... FOR UPDATE requires;
-- the trigger still refuses any real update), so the owner role is the only one that could
-- drop the triggers.

CREATE TABLE entries (
    seq            BIGINT PRIMARY KEY CHECK (seq >= 1),
    kind           TEXT   NOT NULL,
    interval_start BIGINT NULL,
    body           BYTEA  NOT NULL,
    prev_hash      BYTEA  NOT NULL CHECK (length(prev_hash) = 32),
    hash           BYTEA  NOT NULL CHECK (length(hash) = 32)
);

CREATE INDEX entries_kind_interval ON entries (kind, interval_start);

CREATE TABLE postings (
    seq            BIGINT        NOT NULL REFERENCES entries (seq),
    idx            INTEGER       NOT NULL,
    account        TEXT          NOT NULL,
    amount         NUMERIC(30,2) NOT NULL,
    interval_start BIGINT        NOT NULL,
    PRIMARY KEY (seq, idx)
);

CREATE INDEX postings_account ON postings (account);

CREATE TABLE checkpoints (
    size       BIGINT PRIMARY KEY CHECK (size >= 1),
    root_hash  BYTEA  NOT NULL CHECK (length(root_hash) = 32),
    signature  BYTEA  NOT NULL CHECK (length(signature) = 64),
    key_id     BYTEA  NOT NULL CHECK (length(key_id) = 4),
    origin     TEXT   NOT NULL,
    -- Writer's cache of the Merkle frontier at this size; untrusted, the verifier ignores it.
    frontier   BYTEA  NOT NULL,
    created_at BIGINT NOT NULL
);

-- One row, never updated: writers lock it with SELECT ... FOR UPDATE to serialise appends.
CREATE TABLE ledger_head (
    id SMALLINT PRIMARY KEY CHECK (id = 1)
);
INSERT INTO ledger_head (id) VALUES (1);

CREATE FUNCTION ledger_forbid_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger is append-only: % on % is forbidden', TG_OP, TG_TABLE_NAME;
END
$$;

CREATE TRIGGER entries_append_only BEFORE UPDATE OR DELETE ON entries
    FOR EACH ROW EXECUTE FUNCTION ledger_forbid_change();
CREATE TRIGGER entries_no_truncate BEFORE TRUNCATE ON entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_forbid_change();
CREATE TRIGGER postings_append_only BEFORE UPDATE OR DELETE ON postings
    FOR EACH ROW EXECUTE FUNCTION ledger_forbid_change();
CREATE TRIGGER postings_no_truncate BEFORE TRUNCATE ON postings
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_forbid_change();
CREATE TRIGGER checkpoints_append_only BEFORE UPDATE OR DELETE ON checkpoints
    FOR EACH ROW EXECUTE FUNCTION ledger_forbid_change();
CREATE TRIGGER checkpoints_no_truncate BEFORE TRUNCATE ON checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_forbid_change();
CREATE TRIGGER ledger_head_append_only BEFORE UPDATE OR DELETE ON ledger_head
    FOR EACH ROW EXECUTE FUNCTION ledger_forbid_change();
CREATE TRIGGER ledger_head_no_truncate BEFORE TRUNCATE ON ledger_head
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_forbid_change();

REVOKE UPDATE, DELETE, TRUNCATE ON entries, postings, checkpoints, ledger_head FROM PUBLIC;
