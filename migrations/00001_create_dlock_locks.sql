-- 00001_create_dlock_locks.sql: the lock table and its fencing-token sequence.
--
-- One row per held (or expired but not yet purged) lock. Tokens come from a
-- sequence, not from the row, so deleting a row never resets them.
--
-- The names dlock_locks and dlock_locks_token_seq are the defaults; the Go
-- helper in this folder substitutes quoted names for another table. Every
-- statement is idempotent, so this file can be applied by the goose CLI and by
-- the Go helper (each with its own version table) without conflict.

-- (Statements are fenced with StatementBegin/End so that goose does not look
-- for semicolons and comment markers inside quoted table names.)

-- +goose Up
-- +goose StatementBegin
CREATE SEQUENCE IF NOT EXISTS dlock_locks_token_seq AS bigint;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE TABLE IF NOT EXISTS dlock_locks (
    key         text        PRIMARY KEY,
    owner       text        NOT NULL,
    token       bigint      NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
-- +goose StatementEnd

-- +goose Down
-- +goose StatementBegin
DROP TABLE IF EXISTS dlock_locks;
-- +goose StatementEnd

-- +goose StatementBegin
DROP SEQUENCE IF EXISTS dlock_locks_token_seq;
-- +goose StatementEnd
