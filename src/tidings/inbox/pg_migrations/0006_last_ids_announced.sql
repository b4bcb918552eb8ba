-- A node's catch-up starts a newly subscribed channel at tidings.last_ids and drops live
-- announcements at or below it as already delivered. Storing and announcing are two
-- steps here, so the newest stored id can be a message not announced yet (its publisher
-- is between commit and announcement, or died there): starting after it, the node
-- dropped that announcement when it came, or never read the message if it did not, and
-- a session that resumed before the commit never got it. Start at the last id known
-- announced instead, when it is older: what follows it is announced later (and passes)
-- or found behind by the safety net (and read).

CREATE OR REPLACE FUNCTION tidings.last_ids(p_channels text[], p_max_age_ms bigint)
RETURNS TABLE (r_channel text, r_ms bigint, r_seq bigint) LANGUAGE sql AS $$
    SELECT t.channel,
        CASE WHEN (c.announced_ms, c.announced_seq) < (c.last_ms, c.last_seq)
            THEN c.announced_ms ELSE c.last_ms END,
        CASE WHEN (c.announced_ms, c.announced_seq) < (c.last_ms, c.last_seq)
            THEN c.announced_seq ELSE c.last_seq END
    FROM unnest(p_channels) WITH ORDINALITY AS t(channel, i)
    LEFT JOIN tidings.channels c ON c.channel = t.channel
        AND c.retained > 0 AND c.expires_ms > tidings.now_ms()
        AND c.last_ms >= tidings.now_ms() - p_max_age_ms
    ORDER BY t.i
$$;
