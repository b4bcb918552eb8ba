#!/usr/bin/env node
// One user's screen as docs/deploy.md ("Rolling restarts") tells a web app to write it:
// @stomp/stompjs 7 with reconnect, subscribing from onConnect (called again after every
// reconnect) with `tidings-resume-after: <last tidings-id received>` once it has one.
//
//   node tests/js/resuming.mjs --url ws://127.0.0.1:N/publicServer --user 42
//
// stdout, one JSON event per line:
//   {"event":"connected","server":<CONNECTED's server header>}
//   {"event":"subscribed"}                       the first SUBSCRIBE's RECEIPT
//   {"event":"message","id":<tidings-id>,"gap":<tidings-gap or null>,"body":..}
//   {"event":"error","message":<ERROR's message header>,"body":..}
// stdin: EOF (or any line) stops the client and exits 0.

import readline from 'node:readline';
import { parseArgs } from 'node:util';

import { Client } from '@stomp/stompjs';
import WebSocket from 'ws';

globalThis.WebSocket = WebSocket; // Node 20 has none; @stomp/stompjs documents this

const { values: opts } = parseArgs({
  options: { url: { type: 'string' }, user: { type: 'string' } },
});
const emit = event => process.stdout.write(`${JSON.stringify(event)}\n`);

let lastId = null;
let first = true;
const client = new Client({
  brokerURL: opts.url,
  connectHeaders: { login: opts.user },
  heartbeatIncoming: 0,
  heartbeatOutgoing: 0,
  reconnectDelay: 50, // ms: the test's nodes refuse at once while they are down
  onConnect: frame => {
    emit({ event: 'connected', server: frame.headers.server ?? null });
    const headers = lastId ? { 'tidings-resume-after': lastId } : {};
    if (first) {
      first = false;
      headers.receipt = 'first';
      client.watchForReceipt('first', () => emit({ event: 'subscribed' }));
    }
    client.subscribe(
      `/user/${opts.user}/message`,
      message => {
        lastId = message.headers['tidings-id'];
        emit({
          event: 'message',
          id: lastId,
          gap: message.headers['tidings-gap'] ?? null,
          body: message.body,
        });
      },
      headers,
    );
  },
  onStompError: frame =>
    emit({ event: 'error', message: frame.headers.message ?? null, body: frame.body }),
  onWebSocketError: () => {}, // a refused reconnect: it tries again after reconnectDelay
});
client.activate();

const stop = () => client.deactivate().finally(() => process.exit(0));
readline.createInterface({ input: process.stdin }).on('line', stop).on('close', stop);
