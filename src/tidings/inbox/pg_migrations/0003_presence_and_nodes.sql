-- Presence, the node registry and the SockJS session directory on PostgreSQL (issue 20):
-- what the Redis broker keeps in expiring keys, for --broker amqp:// --inbox postgresql://.
-- Rows carry their expiry; the owning node pushes it forward (presence every ttl / 3,
-- the directory as sockjs_relay.py does), reads ignore expired rows, and every node
-- deletes expired ones now and then. A node that dies stops refreshing: its rows stop
-- counting within their TTL.

-- One row per session: <node>|<session> of user_name (brokers/redis_presence.py's members).
CREATE TABLE tidings.presence (
    user_name  text NOT NULL,
    member     text NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (user_name, member)
);
CREATE INDEX presence_expires ON tidings.presence (expires_at);

-- Every live node's latest record (registry.py; server/admin.py writes it every 2 s).
CREATE TABLE tidings.nodes (
    node_id    text PRIMARY KEY,
    record     bytea NOT NULL,
    expires_at timestamptz NOT NULL
);

-- Which node owns which SockJS session, and which nodes are alive (server/sockjs_relay.py).
CREATE TABLE tidings.sockjs_sessions (
    session_id text PRIMARY KEY,
    owner      text NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX sockjs_sessions_expires ON tidings.sockjs_sessions (expires_at);

CREATE TABLE tidings.sockjs_nodes (
    node_id    text PRIMARY KEY,
    expires_at timestamptz NOT NULL
);

-- Whether p_node's liveness row is current.
CREATE FUNCTION tidings.sockjs_alive(p_node text) RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM tidings.sockjs_nodes
                   WHERE node_id = p_node AND expires_at > clock_timestamp())
$$;

-- The live owner of p_session, or, if it has none, p_claimant after claiming it for
-- p_ttl_s: atomic under the session row's lock (sockjs_relay.py's _OWNER_OR_CLAIM).
CREATE FUNCTION tidings.sockjs_owner(p_session text, p_claimant text, p_ttl_s double precision)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_owner text;
    v_expires timestamptz;
BEGIN
    LOOP
        SELECT owner, expires_at INTO v_owner, v_expires
        FROM tidings.sockjs_sessions WHERE session_id = p_session FOR UPDATE;
        IF FOUND THEN
            IF v_expires > clock_timestamp()
               AND (v_owner = p_claimant OR tidings.sockjs_alive(v_owner)) THEN
                RETURN v_owner;
            END IF;
            UPDATE tidings.sockjs_sessions
            SET owner = p_claimant, expires_at = clock_timestamp() + make_interval(secs => p_ttl_s)
            WHERE session_id = p_session;
            RETURN p_claimant;
        END IF;
        INSERT INTO tidings.sockjs_sessions (session_id, owner, expires_at)
        VALUES (p_session, p_claimant, clock_timestamp() + make_interval(secs => p_ttl_s))
        ON CONFLICT (session_id) DO NOTHING;
        IF FOUND THEN
            RETURN p_claimant;
        END IF;  -- another node inserted it meanwhile: read its row
    END LOOP;
END $$;
