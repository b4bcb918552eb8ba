-- Transactional publishing (issue 20, item 4): a back end calls tidings.publish_to_user or
-- tidings.publish_to_topic inside its own transaction; the message exists, and is
-- delivered, if and only if that transaction commits. The nodes drain tidings.outbox
-- (src/tidings/inbox/pg_outbox.py): FOR UPDATE SKIP LOCKED, woken by NOTIFY (sent at
-- commit, never for a rolled-back transaction), with a polling fallback; each row is
-- stored in the inbox (its id assigned then) and deleted in one transaction.

CREATE TABLE tidings.outbox (
    n               bigserial PRIMARY KEY,  -- drain order
    channel         text NOT NULL,          -- u:<user> or t:<topic>
    body            jsonb NOT NULL,         -- a string goes out as text, anything else as JSON
    idempotency_key text
);

-- The publish API's rules for names, keys and sizes (tidings/publish_rules.py).
CREATE FUNCTION tidings._outbox(p_channel text, p_what text, p_name text, p_body jsonb,
    p_key text, p_slash_ok boolean) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_n bigint;
BEGIN
    IF p_name IS NULL OR p_body IS NULL THEN
        RAISE EXCEPTION 'tidings: % and body are required', p_what
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF length(p_name) NOT BETWEEN 1 AND 200 OR p_name ~ '[\x01-\x1f\x7f-\x9f]'
       OR btrim(p_name) = '' OR (NOT p_slash_ok AND strpos(p_name, '/') > 0)
       OR (p_slash_ok AND (p_name LIKE '/%' OR p_name LIKE '%/' OR strpos(p_name, '//') > 0)) THEN
        RAISE EXCEPTION 'tidings: invalid %: %', p_what, p_name
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = '1-200 characters of text, no control character'
                         || CASE WHEN p_slash_ok THEN ', no empty segment' ELSE ', no "/"' END;
    END IF;
    IF p_key IS NOT NULL AND (length(p_key) NOT BETWEEN 1 AND 200
                              OR p_key ~ '[\x01-\x1f\x7f-\x9f]') THEN
        RAISE EXCEPTION 'tidings: invalid idempotency_key'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = '1-200 characters of text, no control character';
    END IF;
    IF octet_length(p_body::text) > 65536 THEN
        RAISE EXCEPTION 'tidings: body is % bytes; the limit is 65536', octet_length(p_body::text)
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    INSERT INTO tidings.outbox (channel, body, idempotency_key)
        VALUES (p_channel, p_body, p_key) RETURNING n INTO v_n;
    PERFORM pg_notify('tidings_outbox', '');
    RETURN v_n;
END $$;

CREATE FUNCTION tidings.publish_to_user(user_id text, body jsonb,
    idempotency_key text DEFAULT NULL) RETURNS bigint LANGUAGE sql AS $$
    SELECT tidings._outbox('u:' || user_id, 'user_id', user_id, body, idempotency_key, false)
$$;

CREATE FUNCTION tidings.publish_to_topic(topic text, body jsonb,
    idempotency_key text DEFAULT NULL) RETURNS bigint LANGUAGE sql AS $$
    SELECT tidings._outbox('t:' || topic, 'topic', topic, body, idempotency_key, true)
$$;
