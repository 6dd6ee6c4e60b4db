-- name: Acquire :one
-- Acquire takes key for owner if it is free or its lease has expired, and
-- returns the new fencing token; no row means a live lease is held. Run it in
-- a REPEATABLE READ transaction (a row changed by a concurrent acquirer after
-- the snapshot then fails with 40001 instead of being overwritten) or on its
-- own at READ COMMITTED (ON CONFLICT locks the row and re-checks the WHERE
-- against its latest version, so a live lease is never overwritten either).
--
-- The token is drawn while holding a transaction-level advisory lock on the
-- key's hash, so concurrent acquirers of one key draw their tokens in the
-- order in which they may insert: a token drawn early by a stalled acquirer
-- can never be stored after a later token was granted and released. Run on
-- its own, the statement's implicit transaction holds the advisory lock
-- until it commits.
INSERT INTO dlock_locks AS l (key, owner, token, acquired_at, expires_at)
VALUES (
    sqlc.arg(key),
    sqlc.arg(owner),
    (SELECT nextval('dlock_locks_token_seq')
       FROM (SELECT pg_advisory_xact_lock(hashtextextended(sqlc.arg(key), 0))) AS key_lock),
    statement_timestamp(),
    statement_timestamp() + sqlc.arg(ttl_ms)::bigint * interval '1 millisecond'
)
ON CONFLICT (key) DO UPDATE
SET owner       = excluded.owner,
    token       = excluded.token,
    acquired_at = excluded.acquired_at,
    expires_at  = excluded.expires_at
WHERE l.expires_at <= statement_timestamp()
RETURNING l.token;

-- name: Refresh :one
-- Refresh extends owner's live lease on key to ttl from now and returns its
-- token; no row means owner holds no live lease.
UPDATE dlock_locks
SET expires_at = statement_timestamp() + sqlc.arg(ttl_ms)::bigint * interval '1 millisecond'
WHERE key = sqlc.arg(key)
  AND owner = sqlc.arg(owner)
  AND expires_at > statement_timestamp()
RETURNING token;

-- name: Transfer :one
-- Transfer gives from_owner's live lease on key to to_owner for ttl from now,
-- with a new fencing token, and returns that token; no row means from_owner
-- holds no live lease (nothing changed, no token drawn). Run on its own: the
-- key is never free and no notification is sent.
--
-- The token is drawn as Acquire draws its own: under the transaction-level
-- advisory lock on the key's hash, held until the statement's transaction
-- commits. Without it, an acquirer that had drawn a smaller token but not
-- yet inserted its row could, once the transferred lease was released, store
-- that smaller token after this one had been granted. With it, no token of
-- the key is drawn before the transaction of every token drawn earlier has
-- ended (the token stored or dropped), so each token granted for the key, by
-- Acquire or Transfer, is greater than every one granted before it. The
-- advisory lock is taken (by the scalar subquery, evaluated once a row
-- matches) before the row lock, in Acquire's order, so the two never
-- deadlock; once the row is locked its latest version is checked against
-- the WHERE again (at READ COMMITTED), so a lease taken over or released
-- meanwhile is left alone.
UPDATE dlock_locks
SET owner       = sqlc.arg(to_owner),
    token       = (SELECT nextval('dlock_locks_token_seq')
                     FROM (SELECT pg_advisory_xact_lock(hashtextextended(sqlc.arg(key), 0))) AS key_lock),
    acquired_at = statement_timestamp(),
    expires_at  = statement_timestamp() + sqlc.arg(ttl_ms)::bigint * interval '1 millisecond'
WHERE key = sqlc.arg(key)
  AND owner = sqlc.arg(from_owner)
  AND expires_at > statement_timestamp()
RETURNING token;

-- name: Release :one
-- Release deletes owner's row for key, live or expired, and reports whether
-- the lease was still live; no row means owner had none.
DELETE FROM dlock_locks
WHERE key = sqlc.arg(key)
  AND owner = sqlc.arg(owner)
RETURNING (expires_at > statement_timestamp())::boolean AS live;

-- name: ReleaseNotify :one
-- ReleaseNotify is Release that also notifies channel, with key as the
-- payload, when it deleted a row (live or expired: either way the key is now
-- free). The notification is sent when the statement's transaction commits;
-- no row deleted, no notification. A notification queue more than half full
-- (a listener somewhere in the database is not reading) gets no more from
-- here: when the queue is full the commit fails, and a release must not.
WITH released AS (
    DELETE FROM dlock_locks
    WHERE key = sqlc.arg(key)
      AND owner = sqlc.arg(owner)
    RETURNING key, (expires_at > statement_timestamp())::boolean AS live
)
SELECT released.live
FROM released
LEFT JOIN LATERAL (
    SELECT pg_notify(sqlc.arg(channel)::text, released.key)
    WHERE pg_notification_queue_usage() < 0.5
) AS notified ON true;

-- name: Inspect :one
-- Inspect returns the live holder of key and the lease's remaining time in
-- microseconds; no row means the key is free.
SELECT owner,
       token,
       (extract(epoch FROM expires_at - statement_timestamp()) * 1000000)::bigint AS ttl_us
FROM dlock_locks
WHERE key = sqlc.arg(key)
  AND expires_at > statement_timestamp();

-- name: Purge :execrows
-- Purge deletes rows whose lease expired at least older_than_ms ago.
DELETE FROM dlock_locks
WHERE expires_at <= statement_timestamp() - sqlc.arg(older_than_ms)::bigint * interval '1 millisecond';

-- name: Fence :one
-- Fence share-locks the row of the acquisition (key, token) if its lease is
-- live, inside the caller's transaction; no row means the lease is gone. The
-- lock keeps takeover, refresh, release and purge of the row waiting until
-- that transaction ends.
SELECT owner
FROM dlock_locks
WHERE key = sqlc.arg(key)
  AND token = sqlc.arg(token)
  AND expires_at > clock_timestamp()
FOR SHARE;
