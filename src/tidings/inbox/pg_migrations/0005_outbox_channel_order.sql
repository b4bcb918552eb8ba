-- Two nodes draining the outbox must store one channel's rows in n order: a drainer
-- leaves a channel whose earlier row another drainer holds (pg_outbox.py), found by
-- this index rather than by a scan of the outbox for every row taken.

CREATE INDEX outbox_channel_n ON tidings.outbox (channel, n);
