-- Several `baton serve` nodes on one database (ledger/DESIGN.md, "Several nodes").
--
-- These tables are the coordination state of the nodes, not the record: the record stays the
-- append-only `entries` chain. They are mutable on purpose (a lease is renewed, intake rows are
-- marked once sequenced), and none of them is needed to verify the ledger.

-- The one leader lease. `epoch` only ever grows: each takeover increments it, and every chain
-- append made in cluster mode locks this row (FOR SHARE) and checks that its writer still holds
-- the epoch it was elected with, so a stale leader's append fails. `expires_at` is the
-- database's clock, so nodes' clocks need not agree.
CREATE TABLE cluster_lease (
    id         SMALLINT PRIMARY KEY CHECK (id = 1),
    holder     TEXT,
    epoch      BIGINT NOT NULL CHECK (epoch >= 0),
    expires_at TIMESTAMPTZ NOT NULL,
    -- Where the holder serves gRPC, for followers' "not the leader" answers.
    addr       TEXT
);
INSERT INTO cluster_lease (id, holder, epoch, expires_at) VALUES (1, NULL, 0, 'epoch');

-- Orders and cancels acknowledged by any node, waiting for the leader to sequence them into
-- the chain. `body` is the exact ledger body the entry will carry (the participant's signed
-- bytes); `seq` is the chain seq once sequenced, written in the same transaction as the entry.
CREATE TABLE intake (
    id             BIGSERIAL PRIMARY KEY,
    kind           TEXT NOT NULL CHECK (kind IN ('order', 'cancel')),
    participant    TEXT NOT NULL,
    nonce          NUMERIC(20, 0) NOT NULL,
    -- The order's id; for a cancel, the order it cancels.
    order_id       TEXT NOT NULL,
    interval_start BIGINT NOT NULL,
    body           BYTEA NOT NULL,
    node_id        TEXT NOT NULL,
    accepted_at_ms BIGINT NOT NULL,
    seq            BIGINT UNIQUE,
    UNIQUE (participant, nonce)
);
CREATE UNIQUE INDEX intake_order_id ON intake (order_id) WHERE kind = 'order';
CREATE INDEX intake_pending ON intake (id) WHERE seq IS NULL;
CREATE INDEX intake_open ON intake (participant) WHERE kind = 'order';
-- An order is cancelled once a cancel row names it (never twice). Intake never updates a row
-- another transaction wrote, so it never waits on the sequencer.
CREATE UNIQUE INDEX intake_cancel_of ON intake (order_id) WHERE kind = 'cancel';

-- The last nonce each participant used through intake. Its row is locked for the whole intake
-- transaction, so one participant's orders get increasing intake ids in nonce order.
CREATE TABLE intake_nonce (
    participant TEXT PRIMARY KEY,
    nonce       NUMERIC(20, 0) NOT NULL
);

-- Per interval: its open orders and whether its gate has closed. Intake locks the row of every
-- interval it writes to; the leader's gate closure sets `closed` under the same lock, so it
-- waits for intake in flight and nothing for the interval commits after it.
CREATE TABLE intake_interval (
    interval_start BIGINT PRIMARY KEY,
    orders         BIGINT NOT NULL CHECK (orders >= 0),
    closed         BOOLEAN NOT NULL
);
