-- Group commit (session 9): the publishes a node has waiting are stored in one statement,
-- one transaction, one round trip, and their advisory locks released in one more
-- (src/tidings/inbox/postgresql.py, _GroupCommit). Each message is still stored by
-- tidings.store, so ids, trims, idempotency keys and the pending messages follow the
-- same rules as one by one.

-- tidings.store of each message, in array order; one row per message, in that order.
-- First it takes every advisory lock of the batch, in key order, before any row lock:
-- batches then never wait on each other in a circle (one waiting for a lock holds only
-- smaller ones, and no row), and the caller orders the messages by channel name, the
-- order every statement of several channels locks their rows in (tidings.history).
-- Each message's tidings.store takes its lock once more, so that each message holds it
-- once on return (the extra hold of the first loop is dropped at the end). The messages
-- of one channel are next to each other, stored in turn; pend_* come with the first of
-- them only (a later one's would repeat those and the batch's own earlier messages).
CREATE FUNCTION tidings.store_many(
    p_channels text[], p_destinations text[], p_bodies bytea[], p_max_lens integer[],
    p_keys text[], p_locks bigint[], p_max_age_ms bigint, p_ttl_ms bigint,
    p_key_ttl_ms bigint
) RETURNS TABLE (id_ms bigint, id_seq bigint, stored boolean,
                 pend_ms bigint[], pend_seq bigint[], pend_body bytea[])
LANGUAGE plpgsql AS $$
DECLARE
    v_lock bigint;
    v_first boolean;
BEGIN
    FOR v_lock IN SELECT DISTINCT l FROM unnest(p_locks) AS l WHERE l IS NOT NULL ORDER BY l
    LOOP
        PERFORM pg_advisory_lock(v_lock);
    END LOOP;
    FOR i IN 1..coalesce(array_length(p_channels, 1), 0) LOOP
        v_first := i = 1 OR p_channels[i] IS DISTINCT FROM p_channels[i - 1];
        RETURN QUERY SELECT s.id_ms, s.id_seq, s.stored,
                CASE WHEN v_first THEN s.pend_ms ELSE '{}' END,
                CASE WHEN v_first THEN s.pend_seq ELSE '{}' END,
                CASE WHEN v_first THEN s.pend_body ELSE '{}' END
            FROM tidings.store(
                p_channels[i], p_destinations[i], p_bodies[i], p_max_lens[i], p_max_age_ms,
                p_ttl_ms, p_keys[i], p_key_ttl_ms, p_locks[i]) s;
    END LOOP;
    FOR v_lock IN SELECT DISTINCT l FROM unnest(p_locks) AS l WHERE l IS NOT NULL LOOP
        PERFORM pg_advisory_unlock(v_lock);
    END LOOP;
END $$;

-- tidings.announced of each (channel, last id announced or NULL, lock), in array order:
-- records what went out and releases each lock once.
CREATE FUNCTION tidings.announced_many(
    p_channels text[], p_ms bigint[], p_seq bigint[], p_locks bigint[]
) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..coalesce(array_length(p_channels, 1), 0) LOOP
        PERFORM tidings.announced(p_channels[i], p_ms[i], p_seq[i], p_locks[i], 1);
    END LOOP;
END $$;
