-- Tidings' inbox on PostgreSQL, schema version 1 (issue 20; src/tidings/inbox/postgresql.py).
-- Applied by `tidings migrate` inside one transaction, which also records it in
-- tidings.tidings_schema_version. Mirrors the Redis inbox's rules (inbox/redis.py):
-- ids "<ms>-<seq>" per channel, stored here as two bigints; retention by count and age;
-- per user acknowledged ids, read ids and a read floor; state that vanishes a while
-- after its last write (Redis key TTLs: `expires_ms` here, swept in batches).

-- One row per channel (u:<user>, t:<topic>): the lock every publish to it takes, and
-- what a stream keeps beside its entries.
CREATE TABLE tidings.channels (
    channel    text PRIMARY KEY,
    last_ms    bigint NOT NULL,  -- the last id given out (even if trimmed since):
    last_seq   bigint NOT NULL,  -- new ids are greater
    gap_ms     bigint NOT NULL,  -- a resume after an id below this one misses something:
    gap_seq    bigint NOT NULL,  -- the greatest id trimmed, or a new stream's first id
    retained   integer NOT NULL, -- rows in tidings.messages
    expires_ms bigint NOT NULL,  -- wall-clock ms after which the channel is gone
    announced_ms  bigint NOT NULL DEFAULT 0,  -- the last id known announced: a publisher
    announced_seq bigint NOT NULL DEFAULT 0   -- that died before announcing left a hole
);
CREATE INDEX channels_expiry ON tidings.channels (expires_ms);

CREATE TABLE tidings.messages (
    channel     text NOT NULL,
    ms          bigint NOT NULL,
    seq         bigint NOT NULL,
    destination text NOT NULL,
    body        bytea NOT NULL,  -- Message.encode() with an empty id; readers put the id in
    PRIMARY KEY (channel, ms, seq)
);

-- Per user: acknowledged ids and read ids (retained ids only; read ids above the floor).
CREATE TABLE tidings.acked (
    user_id text NOT NULL, ms bigint NOT NULL, seq bigint NOT NULL,
    PRIMARY KEY (user_id, ms, seq)
);
CREATE TABLE tidings.read_ids (
    user_id text NOT NULL, ms bigint NOT NULL, seq bigint NOT NULL,
    PRIMARY KEY (user_id, ms, seq)
);
CREATE TABLE tidings.read_floors (
    user_id    text PRIMARY KEY,
    ms         bigint NOT NULL,  -- everything <= (ms, seq) is read; only moves forward
    seq        bigint NOT NULL,
    expires_ms bigint NOT NULL
);
CREATE INDEX read_floors_expiry ON tidings.read_floors (expires_ms);

CREATE TABLE tidings.idempotency (
    channel    text NOT NULL,
    key        text NOT NULL,
    ms         bigint NOT NULL,  -- the id first stored under the key
    seq        bigint NOT NULL,
    expires_ms bigint NOT NULL,
    PRIMARY KEY (channel, key)
);
CREATE INDEX idempotency_expiry ON tidings.idempotency (expires_ms);

-- The wall clock in ms, as Redis TIME: every node agrees on the database's clock.
CREATE FUNCTION tidings.now_ms() RETURNS bigint LANGUAGE sql VOLATILE AS $$
    SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint
$$;

CREATE FUNCTION tidings.user_of(p_channel text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN left(p_channel, 2) = 'u:' THEN substr(p_channel, 3) END
$$;

-- The user's id sets forget every id before the oldest retained message (all if none).
CREATE FUNCTION tidings._forget(p_channel text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_user text := tidings.user_of(p_channel);
    f record;
BEGIN
    IF v_user IS NULL THEN
        RETURN;
    END IF;
    SELECT m.ms, m.seq INTO f FROM tidings.messages m
        WHERE m.channel = p_channel ORDER BY m.ms, m.seq LIMIT 1;
    IF NOT FOUND THEN
        DELETE FROM tidings.acked a WHERE a.user_id = v_user;
        DELETE FROM tidings.read_ids r WHERE r.user_id = v_user;
    ELSE
        DELETE FROM tidings.acked a WHERE a.user_id = v_user AND (a.ms, a.seq) < (f.ms, f.seq);
        DELETE FROM tidings.read_ids r
            WHERE r.user_id = v_user AND (r.ms, r.seq) < (f.ms, f.seq);
    END IF;
END $$;

-- A channel past its expiry: it, its messages and its user's id sets are gone.
CREATE FUNCTION tidings._drop(p_channel text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_user text := tidings.user_of(p_channel);
BEGIN
    DELETE FROM tidings.messages m WHERE m.channel = p_channel;
    DELETE FROM tidings.channels c WHERE c.channel = p_channel;
    IF v_user IS NOT NULL THEN
        DELETE FROM tidings.acked a WHERE a.user_id = v_user;
        DELETE FROM tidings.read_ids r WHERE r.user_id = v_user;
    END IF;
END $$;

-- Trim a channel (its row locked by the caller) to p_max_len messages (NULL: no count
-- trim) and by age; the greatest trimmed id becomes the gap mark. If anything went, or
-- p_forget, the user's id sets forget what is no longer retained.
CREATE FUNCTION tidings._trim(
    p_channel text, p_max_len integer, p_max_age_ms bigint, p_now bigint, p_forget boolean
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    c record;
    g record;
    v_gone bigint := 0;
BEGIN
    SELECT ch.retained, ch.gap_ms, ch.gap_seq INTO c
        FROM tidings.channels ch WHERE ch.channel = p_channel;
    IF p_max_len IS NOT NULL AND c.retained > p_max_len THEN
        WITH gone AS (
            DELETE FROM tidings.messages m USING (
                SELECT o.ms, o.seq FROM tidings.messages o WHERE o.channel = p_channel
                ORDER BY o.ms, o.seq LIMIT c.retained - p_max_len
            ) old
            WHERE m.channel = p_channel AND m.ms = old.ms AND m.seq = old.seq
            RETURNING m.ms, m.seq
        )
        SELECT count(*) OVER () AS n, gone.ms, gone.seq INTO g
            FROM gone ORDER BY gone.ms DESC, gone.seq DESC LIMIT 1;
        IF FOUND THEN
            v_gone := v_gone + g.n;
            IF (g.ms, g.seq) > (c.gap_ms, c.gap_seq) THEN
                c.gap_ms := g.ms;
                c.gap_seq := g.seq;
            END IF;
        END IF;
    END IF;
    WITH gone AS (
        DELETE FROM tidings.messages m
        WHERE m.channel = p_channel AND m.ms < p_now - p_max_age_ms
        RETURNING m.ms, m.seq
    )
    SELECT count(*) OVER () AS n, gone.ms, gone.seq INTO g
        FROM gone ORDER BY gone.ms DESC, gone.seq DESC LIMIT 1;
    IF FOUND THEN
        v_gone := v_gone + g.n;
        IF (g.ms, g.seq) > (c.gap_ms, c.gap_seq) THEN
            c.gap_ms := g.ms;
            c.gap_seq := g.seq;
        END IF;
    END IF;
    IF v_gone > 0 THEN
        UPDATE tidings.channels ch
            SET retained = ch.retained - v_gone, gap_ms = c.gap_ms, gap_seq = c.gap_seq
            WHERE ch.channel = p_channel;
    END IF;
    IF v_gone > 0 OR p_forget THEN
        PERFORM tidings._forget(p_channel);
    END IF;
END $$;

-- Before a read: false if the channel does not exist (or has just expired, and is
-- dropped); else trims it by age, locking its row only when something is to go.
CREATE FUNCTION tidings._prepare(p_channel text, p_max_age_ms bigint, p_now bigint)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    v_expires bigint;
BEGIN
    SELECT c.expires_ms INTO v_expires FROM tidings.channels c WHERE c.channel = p_channel;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF v_expires <= p_now THEN
        SELECT c.expires_ms INTO v_expires FROM tidings.channels c
            WHERE c.channel = p_channel FOR UPDATE;
        IF NOT FOUND THEN
            RETURN false;
        END IF;
        IF v_expires <= p_now THEN
            PERFORM tidings._drop(p_channel);
            RETURN false;
        END IF;
    END IF;
    IF EXISTS (SELECT 1 FROM tidings.messages m
               WHERE m.channel = p_channel AND m.ms < p_now - p_max_age_ms) THEN
        PERFORM 1 FROM tidings.channels c WHERE c.channel = p_channel FOR UPDATE;
        PERFORM tidings._trim(p_channel, NULL, p_max_age_ms, p_now, false);
    END IF;
    RETURN true;
END $$;

-- Store a message: assign its id under the channel row's lock (ids are committed in
-- id order), trim, remember the idempotency key. stored is false when the key was seen:
-- then the id is the first one, and nothing was stored. With p_lock, first takes that
-- session-level advisory lock, which the caller releases (tidings.announced) once it has
-- announced the message: announcements of one channel go out in id order, whatever node
-- publishes; and pend_* are the retained messages stored before this one but never
-- announced (their publisher died, or its broker failed, in between): the caller
-- announces them first. Without p_lock (one node, which announces at once), the message
-- counts as announced.
CREATE FUNCTION tidings.store(
    p_channel text, p_destination text, p_body bytea, p_max_len integer,
    p_max_age_ms bigint, p_ttl_ms bigint, p_key text, p_key_ttl_ms bigint, p_lock bigint,
    OUT id_ms bigint, OUT id_seq bigint, OUT stored boolean,
    OUT pend_ms bigint[], OUT pend_seq bigint[], OUT pend_body bytea[]
) LANGUAGE plpgsql AS $$
DECLARE
    c record;
    v_now bigint;
    v_fresh boolean;
BEGIN
    IF p_lock IS NOT NULL THEN
        PERFORM pg_advisory_lock(p_lock);
    END IF;
    v_now := tidings.now_ms();
    INSERT INTO tidings.channels AS ch
        VALUES (p_channel, 0, 0, 0, 0, 0, v_now + p_ttl_ms)
        ON CONFLICT (channel) DO NOTHING;
    SELECT * INTO c FROM tidings.channels ch WHERE ch.channel = p_channel FOR UPDATE;
    pend_ms := '{}';
    pend_seq := '{}';
    pend_body := '{}';
    IF p_key IS NOT NULL THEN
        SELECT i.ms, i.seq INTO id_ms, id_seq FROM tidings.idempotency i
            WHERE i.channel = p_channel AND i.key = p_key AND i.expires_ms > v_now;
        IF FOUND THEN
            stored := false;
            RETURN;
        END IF;
    END IF;
    IF c.expires_ms <= v_now THEN  -- expired: what it held is unknown from now on
        PERFORM tidings._drop(p_channel);
        INSERT INTO tidings.channels VALUES (p_channel, 0, 0, 0, 0, 0, v_now + p_ttl_ms);
        SELECT * INTO c FROM tidings.channels ch WHERE ch.channel = p_channel;
    END IF;
    IF p_lock IS NOT NULL AND (c.last_ms, c.last_seq) > (c.announced_ms, c.announced_seq) THEN
        SELECT coalesce(array_agg(m.ms ORDER BY m.ms, m.seq), '{}'),
               coalesce(array_agg(m.seq ORDER BY m.ms, m.seq), '{}'),
               coalesce(array_agg(m.body ORDER BY m.ms, m.seq), '{}')
            INTO pend_ms, pend_seq, pend_body
            FROM (SELECT x.ms, x.seq, x.body FROM tidings.messages x
                  WHERE x.channel = p_channel
                    AND (x.ms, x.seq) > (c.announced_ms, c.announced_seq)
                  ORDER BY x.ms, x.seq LIMIT 1000) m;
    END IF;
    v_fresh := c.retained = 0;  -- the user's id sets may name ids of what went before
    id_ms := greatest(v_now, c.last_ms);
    id_seq := CASE WHEN id_ms = c.last_ms THEN c.last_seq + 1 ELSE 0 END;
    IF c.last_ms = 0 AND c.last_seq = 0 THEN  -- a new stream: unknown before its first id
        c.gap_ms := id_ms;
        c.gap_seq := id_seq;
    END IF;
    INSERT INTO tidings.messages VALUES (p_channel, id_ms, id_seq, p_destination, p_body);
    UPDATE tidings.channels ch
        SET last_ms = id_ms, last_seq = id_seq, gap_ms = c.gap_ms, gap_seq = c.gap_seq,
            retained = c.retained + 1, expires_ms = v_now + p_ttl_ms,
            announced_ms = CASE WHEN p_lock IS NULL THEN id_ms ELSE ch.announced_ms END,
            announced_seq = CASE WHEN p_lock IS NULL THEN id_seq ELSE ch.announced_seq END
        WHERE ch.channel = p_channel;
    PERFORM tidings._trim(p_channel, p_max_len, p_max_age_ms, v_now, v_fresh);
    IF p_key IS NOT NULL THEN
        INSERT INTO tidings.idempotency AS i
            VALUES (p_channel, p_key, id_ms, id_seq, v_now + p_key_ttl_ms)
            ON CONFLICT (channel, key) DO UPDATE
            SET ms = excluded.ms, seq = excluded.seq, expires_ms = excluded.expires_ms;
    END IF;
    stored := true;
END $$;

-- After the announcement of a channel's messages up to an id (NULL: it failed): record
-- it, then release the channel's advisory lock taken by tidings.store.
-- p_times: how many times this session took the lock (tidings.store calls).
CREATE FUNCTION tidings.announced(p_channel text, p_ms bigint, p_seq bigint, p_lock bigint,
    p_times integer DEFAULT 1) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF p_ms IS NOT NULL THEN
        UPDATE tidings.channels c SET announced_ms = p_ms, announced_seq = p_seq
            WHERE c.channel = p_channel AND (c.announced_ms, c.announced_seq) < (p_ms, p_seq);
    END IF;
    FOR i IN 1..p_times LOOP
        PERFORM pg_advisory_unlock(p_lock);
    END LOOP;
END $$;

-- Messages of a channel after an id, oldest first, and whether some after it were
-- trimmed: the gap mark and the messages come from one statement (one snapshot).
CREATE FUNCTION tidings.history(
    p_channel text, p_after_ms bigint, p_after_seq bigint, p_limit integer,
    p_max_age_ms bigint,
    OUT gap boolean, OUT ids_ms bigint[], OUT ids_seq bigint[], OUT bodies bytea[]
) LANGUAGE plpgsql AS $$
DECLARE
    v_resume boolean := p_after_ms <> 0 OR p_after_seq <> 0;
BEGIN
    IF tidings._prepare(p_channel, p_max_age_ms, tidings.now_ms()) THEN
        SELECT v_resume AND (p_after_ms, p_after_seq) < (c.gap_ms, c.gap_seq),
               coalesce(a.ms, '{}'), coalesce(a.seq, '{}'), coalesce(a.body, '{}')
            INTO gap, ids_ms, ids_seq, bodies
            FROM tidings.channels c, LATERAL (
                SELECT array_agg(m.ms ORDER BY m.ms, m.seq) AS ms,
                       array_agg(m.seq ORDER BY m.ms, m.seq) AS seq,
                       array_agg(m.body ORDER BY m.ms, m.seq) AS body
                FROM (SELECT x.ms, x.seq, x.body FROM tidings.messages x
                      WHERE x.channel = p_channel AND (x.ms, x.seq) > (p_after_ms, p_after_seq)
                      ORDER BY x.ms, x.seq LIMIT p_limit) m
            ) a
            WHERE c.channel = p_channel;
        IF FOUND THEN
            RETURN;
        END IF;
    END IF;
    gap := v_resume;  -- no stream: what came before is unknown
    ids_ms := '{}';
    ids_seq := '{}';
    bodies := '{}';
END $$;

-- A user's retained messages after an id, each with its read flag.
CREATE FUNCTION tidings.listing(
    p_user text, p_after_ms bigint, p_after_seq bigint, p_limit integer, p_max_age_ms bigint
) RETURNS TABLE (r_ms bigint, r_seq bigint, r_body bytea, r_read boolean)
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT tidings._prepare('u:' || p_user, p_max_age_ms, tidings.now_ms()) THEN
        RETURN;
    END IF;
    RETURN QUERY
        SELECT m.ms, m.seq, m.body,
               (f.user_id IS NOT NULL AND (m.ms, m.seq) <= (f.ms, f.seq)) OR EXISTS (
                   SELECT 1 FROM tidings.read_ids r
                   WHERE r.user_id = p_user AND r.ms = m.ms AND r.seq = m.seq)
        FROM tidings.messages m
        LEFT JOIN tidings.read_floors f ON f.user_id = p_user
        WHERE m.channel = 'u:' || p_user AND (m.ms, m.seq) > (p_after_ms, p_after_seq)
        ORDER BY m.ms, m.seq LIMIT p_limit;
END $$;

-- (unread count, the newest id the inbox gave out, even if trimmed or deleted since) of a
-- user, from one statement: messages with a greater id are not in the count (issue 16).
CREATE FUNCTION tidings._unread_state(p_user text, OUT unread bigint, OUT last_ms bigint,
    OUT last_seq bigint) LANGUAGE sql AS $$
    SELECT
        (SELECT count(*) FROM tidings.messages m
         LEFT JOIN tidings.read_floors f ON f.user_id = p_user
         WHERE m.channel = 'u:' || p_user
           AND (f.user_id IS NULL OR (m.ms, m.seq) > (f.ms, f.seq)))
        - (SELECT count(*) FROM tidings.read_ids r WHERE r.user_id = p_user),
        c.last_ms, c.last_seq
    FROM (SELECT 1) one
    LEFT JOIN tidings.channels c ON c.channel = 'u:' || p_user
        AND (c.last_ms, c.last_seq) <> (0::bigint, 0::bigint)
$$;

CREATE FUNCTION tidings.unread_state(p_user text, p_max_age_ms bigint,
    OUT unread bigint, OUT last_ms bigint, OUT last_seq bigint) LANGUAGE plpgsql AS $$
BEGIN
    IF NOT tidings._prepare('u:' || p_user, p_max_age_ms, tidings.now_ms()) THEN
        unread := 0;
        RETURN;
    END IF;
    SELECT s.unread, s.last_ms, s.last_seq INTO unread, last_ms, last_seq
        FROM tidings._unread_state(p_user) s;
END $$;

-- Retained messages of a user at a destination not acknowledged, oldest first.
CREATE FUNCTION tidings.unacked(p_user text, p_destination text, p_limit integer,
    p_max_age_ms bigint) RETURNS TABLE (r_ms bigint, r_seq bigint, r_body bytea)
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT tidings._prepare('u:' || p_user, p_max_age_ms, tidings.now_ms()) THEN
        RETURN;
    END IF;
    RETURN QUERY
        SELECT m.ms, m.seq, m.body FROM tidings.messages m
        WHERE m.channel = 'u:' || p_user AND m.destination = p_destination
          AND NOT EXISTS (SELECT 1 FROM tidings.acked a
                          WHERE a.user_id = p_user AND a.ms = m.ms AND a.seq = m.seq)
        ORDER BY m.ms, m.seq LIMIT p_limit;
END $$;

-- Mark retained ids acknowledged (unknown ids are ignored). The channel row is held
-- (FOR SHARE) so that no publish trims them meanwhile.
CREATE FUNCTION tidings.ack(p_user text, p_ms bigint[], p_seq bigint[], p_max_age_ms bigint)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF NOT tidings._prepare('u:' || p_user, p_max_age_ms, tidings.now_ms()) THEN
        RETURN;
    END IF;
    PERFORM 1 FROM tidings.channels c WHERE c.channel = 'u:' || p_user FOR SHARE;
    INSERT INTO tidings.acked (user_id, ms, seq)
        SELECT p_user, m.ms, m.seq FROM tidings.messages m
        JOIN unnest(p_ms, p_seq) AS i(ms, seq) ON m.ms = i.ms AND m.seq = i.seq
        WHERE m.channel = 'u:' || p_user
        ON CONFLICT DO NOTHING;
END $$;

-- Mark ids read, and move the floor to the newest retained id <= up_to (only forward);
-- returns the unread state after. The floor row is locked: one user's marks in turn.
CREATE FUNCTION tidings.mark_read(p_user text, p_ms bigint[], p_seq bigint[],
    p_up_ms bigint, p_up_seq bigint, p_max_age_ms bigint, p_ttl_ms bigint,
    OUT unread bigint, OUT last_ms bigint, OUT last_seq bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_now bigint := tidings.now_ms();
    v_channel text := 'u:' || p_user;
    f record;
    a record;
BEGIN
    IF NOT tidings._prepare(v_channel, p_max_age_ms, v_now) THEN
        unread := 0;
        RETURN;
    END IF;
    PERFORM 1 FROM tidings.channels c WHERE c.channel = v_channel FOR SHARE;
    INSERT INTO tidings.read_floors VALUES (p_user, 0, 0, v_now + p_ttl_ms)
        ON CONFLICT (user_id) DO NOTHING;
    SELECT rf.ms, rf.seq INTO f FROM tidings.read_floors rf
        WHERE rf.user_id = p_user FOR UPDATE;
    IF p_up_ms IS NOT NULL THEN
        SELECT m.ms, m.seq INTO a FROM tidings.messages m
            WHERE m.channel = v_channel AND (m.ms, m.seq) <= (p_up_ms, p_up_seq)
            ORDER BY m.ms DESC, m.seq DESC LIMIT 1;
        IF FOUND AND (a.ms, a.seq) > (f.ms, f.seq) THEN
            f.ms := a.ms;
            f.seq := a.seq;
            DELETE FROM tidings.read_ids r
                WHERE r.user_id = p_user AND (r.ms, r.seq) <= (f.ms, f.seq);
        END IF;
    END IF;
    UPDATE tidings.read_floors rf SET ms = f.ms, seq = f.seq, expires_ms = v_now + p_ttl_ms
        WHERE rf.user_id = p_user;
    INSERT INTO tidings.read_ids (user_id, ms, seq)
        SELECT p_user, m.ms, m.seq FROM tidings.messages m
        JOIN unnest(p_ms, p_seq) AS i(ms, seq) ON m.ms = i.ms AND m.seq = i.seq
        WHERE m.channel = v_channel AND (m.ms, m.seq) > (f.ms, f.seq)
        ON CONFLICT DO NOTHING;
    SELECT s.unread, s.last_ms, s.last_seq INTO unread, last_ms, last_seq
        FROM tidings._unread_state(p_user) s;
END $$;

-- Delete a user's oldest messages: all, or those <= up_to (from the front, as
-- retention trims: the gap mark moves, new ids stay greater). Returns (deleted, the
-- unread state after).
CREATE FUNCTION tidings.delete_inbox(p_user text, p_up_ms bigint, p_up_seq bigint,
    p_max_age_ms bigint, OUT deleted bigint, OUT unread bigint, OUT last_ms bigint,
    OUT last_seq bigint) LANGUAGE plpgsql AS $$
DECLARE
    v_channel text := 'u:' || p_user;
    c record;
    g record;
BEGIN
    deleted := 0;
    IF NOT tidings._prepare(v_channel, p_max_age_ms, tidings.now_ms()) THEN
        unread := 0;
        RETURN;
    END IF;
    SELECT ch.gap_ms, ch.gap_seq INTO c FROM tidings.channels ch
        WHERE ch.channel = v_channel FOR UPDATE;
    WITH gone AS (
        DELETE FROM tidings.messages m
        WHERE m.channel = v_channel
          AND (p_up_ms IS NULL OR (m.ms, m.seq) <= (p_up_ms, p_up_seq))
        RETURNING m.ms, m.seq
    )
    SELECT count(*) OVER () AS n, gone.ms, gone.seq INTO g
        FROM gone ORDER BY gone.ms DESC, gone.seq DESC LIMIT 1;
    IF FOUND THEN
        deleted := g.n;
        UPDATE tidings.channels ch
            SET retained = ch.retained - g.n,
                gap_ms = CASE WHEN (g.ms, g.seq) > (c.gap_ms, c.gap_seq) THEN g.ms ELSE c.gap_ms END,
                gap_seq = CASE WHEN (g.ms, g.seq) > (c.gap_ms, c.gap_seq) THEN g.seq ELSE c.gap_seq END
            WHERE ch.channel = v_channel;
        PERFORM tidings._forget(v_channel);
    END IF;
    SELECT s.unread, s.last_ms, s.last_seq INTO unread, last_ms, last_seq
        FROM tidings._unread_state(p_user) s;
END $$;

-- One batch of the sweep (Redis key expiry): expired channels with their messages and
-- id sets, expired idempotency keys and read floors, at most p_batch of each. Returns
-- how many rows of those three kinds went; the caller repeats while it is p_batch or more.
CREATE FUNCTION tidings.sweep(p_batch integer) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_now bigint := tidings.now_ms();
    r record;
    v_channels integer := 0;
    v_keys integer;
    v_floors integer;
BEGIN
    FOR r IN SELECT c.channel FROM tidings.channels c WHERE c.expires_ms <= v_now
             ORDER BY c.expires_ms LIMIT p_batch FOR UPDATE SKIP LOCKED LOOP
        PERFORM tidings._drop(r.channel);
        v_channels := v_channels + 1;
    END LOOP;
    DELETE FROM tidings.idempotency i WHERE i.ctid = ANY (ARRAY(
        SELECT x.ctid FROM tidings.idempotency x WHERE x.expires_ms <= v_now LIMIT p_batch));
    GET DIAGNOSTICS v_keys = ROW_COUNT;
    DELETE FROM tidings.read_floors f WHERE f.ctid = ANY (ARRAY(
        SELECT x.ctid FROM tidings.read_floors x WHERE x.expires_ms <= v_now LIMIT p_batch));
    GET DIAGNOSTICS v_floors = ROW_COUNT;
    RETURN greatest(v_channels, v_keys, v_floors);
END $$;

-- For the node's catch-up: the newest retained id of each channel (NULL: none), and
-- which channels hold an id after a given one. Read-only: the newest retained id is the
-- last given out while anything is retained (trims take the oldest first).
CREATE FUNCTION tidings.last_ids(p_channels text[], p_max_age_ms bigint)
RETURNS TABLE (r_channel text, r_ms bigint, r_seq bigint) LANGUAGE sql AS $$
    SELECT t.channel, c.last_ms, c.last_seq
    FROM unnest(p_channels) WITH ORDINALITY AS t(channel, i)
    LEFT JOIN tidings.channels c ON c.channel = t.channel
        AND c.retained > 0 AND c.expires_ms > tidings.now_ms()
        AND c.last_ms >= tidings.now_ms() - p_max_age_ms
    ORDER BY t.i
$$;

CREATE FUNCTION tidings.behind(p_channels text[], p_ms bigint[], p_seq bigint[])
RETURNS TABLE (r_channel text) LANGUAGE sql AS $$
    SELECT t.channel
    FROM unnest(p_channels, p_ms, p_seq) WITH ORDINALITY AS t(channel, ms, seq, i)
    JOIN tidings.channels c ON c.channel = t.channel
    WHERE c.retained > 0 AND c.expires_ms > tidings.now_ms()
      AND (c.last_ms, c.last_seq) > (t.ms, t.seq)
    ORDER BY t.i
$$;
