#!/usr/bin/env node
// A scriptable STOMP-over-WebSocket client, driven by pytest (tests/jsclient.py).
//
//   node tests/js/agent.mjs --lib stompjs7|legacy|webstomp --url ws://127.0.0.1:N/stomp
//                           [--protocols v12.stomp,v11.stomp]
//   node tests/js/agent.mjs --lib stompjs7|legacy --url http://127.0.0.1:N/stomp
//                           --transport websocket|xhr-streaming|xhr-polling|eventsource
//
// With --transport the client speaks STOMP over SockJS: sockjs-client 1.6's
// `new SockJS(url, null, {transports: [transport]})` instead of a WebSocket, and the
// `connected` event also names the SockJS transport in use.
//
// stdin: one JSON command per line; stdout: one JSON event per line and nothing else.
// Debug output goes to stderr, and only when TIDINGS_AGENT_DEBUG=1.
//
// Commands                                            Events it leads to
//   {"op":"connect","headers":{..},"heartbeat":[o,i],   connected {headers, protocol, version}
//    "versions":["1.2","1.1"]}                          (or error / closed)
//   {"op":"subscribe","id":"s1","destination":..,       subscribed {id}   (on the RECEIPT)
//    "headers":{..}}
//   {"op":"unsubscribe","id":"s1","headers":{..}}       unsubscribed {id} (on the RECEIPT)
//   {"op":"send","destination":..,"body":..,            receipt {id} if headers.receipt is set
//    "headers":{..}}
//   {"op":"ack"|"nack","message":<ack id>,              -
//    "subscription":..,"headers":{..}}
//   {"op":"disconnect"}                                 closed {code, reason}
//   {"op":"drop"}  (terminate the socket, no DISCONNECT) closed
//   {"op":"exit"}  (also on stdin EOF)                  the process exits 0
// Other events: message {subscription, destination, headers, body}, receipt {id},
// error {headers, body} (a STOMP ERROR frame), closed {code, reason, error?},
// fatal {message} (bad command, or a library call threw). Every connection that was
// opened ends with exactly one `closed` event. A fatal does not stop the agent.
//
// Defaults: heartbeat [0,0]; versions ["1.2","1.1","1.0"] for stompjs7 and ["1.1","1.0"]
// for legacy (what each library offers), which also pick the WebSocket subprotocols
// (v12.stomp...) unless --protocols is given; webstomp (webstomp-client 1.2.6, raw
// WebSocket only) ignores "versions": it offers v10.stomp, v11.stomp, v12.stomp in that
// order and sends as accept-version the one version of the subprotocol the server chose; the subscribe/unsubscribe receipt is
// "subscribe-<id>"/"unsubscribe-<id>" unless headers.receipt is set. For ack/nack,
// "message" is the MESSAGE's `ack` header on STOMP 1.2, its `message-id` before.
//
// What legacy stompjs 2.3.3 does on the wire (so the server must cope with it):
// it splits frames over 16 KiB into several WebSocket messages; it neither escapes nor
// unescapes header values; it treats a WebSocket message that is exactly "\n" as a
// heart-beat, and anything else as frames (so no EOLs before a frame); on 1.1 it
// crashes (-> fatal) if CONNECTED lacks heart-beat; DISCONNECT asks for no receipt and
// closes the socket at once.

import { createRequire } from 'node:module';
import readline from 'node:readline';
import { parseArgs } from 'node:util';

import { Client, Versions } from '@stomp/stompjs';
import WebSocket from 'ws';

const require = createRequire(import.meta.url);

// Node 20 has no global WebSocket; @stomp/stompjs documents this assignment for Node.
globalThis.WebSocket = WebSocket;

const DEBUG = process.env.TIDINGS_AGENT_DEBUG === '1';

function emit(event) {
  // stdout to a pipe is synchronous on Linux: each line is out before the next event.
  process.stdout.write(`${JSON.stringify(event)}\n`);
}

function debug(...args) {
  if (DEBUG) process.stderr.write(`[agent] ${args.join(' ')}\n`);
}

function fatal(message) {
  debug('fatal:', message);
  emit({ event: 'fatal', message: String(message) });
}

const { values: opts } = parseArgs({
  options: {
    lib: { type: 'string' },
    url: { type: 'string' },
    protocols: { type: 'string' },
    transport: { type: 'string' },
  },
});
if (!['stompjs7', 'legacy', 'webstomp'].includes(opts.lib) || !opts.url) {
  process.stderr.write(
    'usage: agent.mjs --lib stompjs7|legacy|webstomp --url ws://host:port/path [--protocols a,b]\n' +
      '       agent.mjs --lib stompjs7|legacy --url http://host:port/path --transport NAME\n',
  );
  process.exit(2);
}

const VERSION_PROTOCOLS = { '1.0': 'v10.stomp', '1.1': 'v11.stomp', '1.2': 'v12.stomp' };

function protocolsFor(versions) {
  if (opts.protocols) return opts.protocols.split(',').filter(Boolean);
  return versions.map(v => VERSION_PROTOCOLS[v] ?? `v${v.replace('.', '')}.stomp`);
}

/** Opens the WebSocket and reports its one `closed` event, whatever the library does. */
function openSocket(versions) {
  if (opts.transport) return openSockJS();
  const protocols = protocolsFor(versions);
  debug('opening', opts.url, 'protocols', protocols.join(','));
  const ws = new WebSocket(opts.url, protocols);
  let lastError = null;
  ws.on('error', err => {
    lastError = err.message;
    debug('ws error:', err.message);
  });
  ws.on('close', (code, reason) => {
    const event = { event: 'closed', code: code ?? null, reason: reason.toString() };
    if (lastError) event.error = lastError;
    emit(event);
    session = null;
  });
  return ws;
}

/** A SockJS connection (sockjs-client 1.6) restricted to one transport; same events. */
function openSockJS() {
  const SockJS = require('sockjs-client');
  debug('opening SockJS', opts.url, 'transport', opts.transport);
  const sock = new SockJS(opts.url, null, { transports: [opts.transport] });
  sock.addEventListener('close', event => {
    emit({ event: 'closed', code: event.code ?? null, reason: event.reason ?? '' });
    session = null;
  });
  return sock;
}

/** Cut the connection without a goodbye: a WebSocket is terminated, SockJS closed. */
function terminate(socket) {
  if (!socket) return;
  if (typeof socket.terminate === 'function') socket.terminate();
  else socket.close();
}

function plainHeaders(headers) {
  return Object.assign({}, headers);
}

// --- @stomp/stompjs 7 ------------------------------------------------------------------

class StompJs7Session {
  constructor(cmd) {
    const versions = cmd.versions ?? ['1.2', '1.1', '1.0'];
    const [outgoing, incoming] = cmd.heartbeat ?? [0, 0];
    this.ws = null;
    this.client = new Client({
      webSocketFactory: () => (this.ws = openSocket(versions)),
      stompVersions: new Versions(versions),
      connectHeaders: plainHeaders(cmd.headers),
      heartbeatOutgoing: outgoing,
      heartbeatIncoming: incoming,
      reconnectDelay: 0,
      debug: DEBUG ? msg => debug('stompjs7:', msg) : () => {},
      onConnect: frame =>
        emit({
          event: 'connected',
          headers: plainHeaders(frame.headers),
          protocol: this.ws?.protocol ?? null,
          transport: this.ws?.transport ?? null,
          version: this.client.connectedVersion ?? null,
        }),
      onStompError: frame =>
        emit({ event: 'error', headers: plainHeaders(frame.headers), body: frame.body }),
      // The DISCONNECT's receipt (the library adds one and closes the socket on it).
      onDisconnect: frame => emit({ event: 'receipt', id: frame.headers['receipt-id'] }),
      onUnhandledMessage: message => this.onMessage(message),
      onUnhandledReceipt: frame => emit({ event: 'receipt', id: frame.headers['receipt-id'] }),
      onUnhandledFrame: frame => fatal(`unexpected ${frame.command} frame`),
      onWebSocketClose: () => {}, // reported by openSocket()
      onWebSocketError: () => {},
    });
    this.client.activate();
  }

  onMessage(message) {
    emit({
      event: 'message',
      subscription: message.headers.subscription ?? null,
      destination: message.headers.destination ?? null,
      headers: plainHeaders(message.headers),
      body: message.body,
    });
  }

  subscribe(cmd, headers) {
    this.client.watchForReceipt(headers.receipt, () =>
      emit({ event: 'subscribed', id: cmd.id }),
    );
    this.client.subscribe(cmd.destination, message => this.onMessage(message), headers);
  }

  unsubscribe(cmd, headers) {
    this.client.watchForReceipt(headers.receipt, () =>
      emit({ event: 'unsubscribed', id: cmd.id }),
    );
    this.client.unsubscribe(cmd.id, headers);
  }

  send(cmd) {
    this.client.publish({
      destination: cmd.destination,
      body: cmd.body ?? '',
      headers: plainHeaders(cmd.headers),
    });
  }

  ack(cmd, nack) {
    const method = nack ? 'nack' : 'ack';
    this.client[method](cmd.message, cmd.subscription, plainHeaders(cmd.headers));
  }

  disconnect() {
    // Sends DISCONNECT with a receipt, closes the socket when the RECEIPT arrives.
    this.client.deactivate().catch(err => fatal(`deactivate: ${err}`));
  }

  drop() {
    terminate(this.ws);
  }
}

// --- stompjs 2.3.3 (legacy) --------------------------------------------------------------

// `require('stompjs')` also loads its node transport (needs the optional `websocket`
// package); its core is the browser build, which works over any WebSocket-like object.
const legacyStomp = (() => {
  const { Stomp } = require('stompjs/lib/stomp.js');
  // Defined only when `window` exists; heart-beating crashes without them.
  Stomp.setInterval = (interval, f) => setInterval(f, interval);
  Stomp.clearInterval = id => clearInterval(id);
  return Stomp;
})();

// The legacy stompjs and webstomp-client share one API (webstomp-client began as a fork
// of stompjs): the same receipt, subscription, ack and disconnect calls.
class StompJsFamilySession {
  // Wires `client` (over `this.ws`) and sends CONNECT. `transportOf()` names the SockJS
  // transport once connected; `errorFrame(arg)` tells an ERROR frame from what else the
  // library passes to its error callback (a close).
  start(client, cmd, transportOf, errorFrame) {
    this.client = client;
    this.receiptWaiters = new Map();
    client.onreceipt = frame => {
      const id = frame.headers['receipt-id'];
      const waiter = this.receiptWaiters.get(id);
      if (waiter) {
        this.receiptWaiters.delete(id);
        waiter();
      } else {
        emit({ event: 'receipt', id });
      }
    };
    // Messages for a subscription it no longer knows land here.
    client.onreceive = message => this.onMessage(message);
    client.connect(
      plainHeaders(cmd.headers),
      frame =>
        emit({
          event: 'connected',
          headers: plainHeaders(frame.headers),
          protocol: this.ws.protocol || null,
          transport: transportOf(),
          version: frame.headers.version ?? null,
        }),
      arg => {
        if (!errorFrame(arg)) return;
        emit({ event: 'error', headers: plainHeaders(arg.headers), body: arg.body });
      },
    );
  }

  onMessage(message) {
    emit({
      event: 'message',
      subscription: message.headers.subscription ?? null,
      destination: message.headers.destination ?? null,
      headers: plainHeaders(message.headers),
      body: message.body,
    });
  }

  requireConnected() {
    if (!this.client.connected) throw new Error('not connected');
  }

  subscribe(cmd, headers) {
    this.requireConnected();
    this.receiptWaiters.set(headers.receipt, () => emit({ event: 'subscribed', id: cmd.id }));
    this.client.subscribe(cmd.destination, message => this.onMessage(message), headers);
  }

  unsubscribe(cmd, headers) {
    this.requireConnected();
    // Their unsubscribe(id) sends no other header; do what it does, plus our headers.
    this.receiptWaiters.set(headers.receipt, () => emit({ event: 'unsubscribed', id: cmd.id }));
    delete this.client.subscriptions[cmd.id];
    this.client._transmit('UNSUBSCRIBE', headers);
  }

  ack(cmd, nack) {
    this.requireConnected();
    const method = nack ? 'nack' : 'ack';
    this.client[method](cmd.message, cmd.subscription, plainHeaders(cmd.headers));
  }

  disconnect() {
    // Sends DISCONNECT (no receipt) and closes the socket at once.
    this.client.disconnect();
  }

  drop() {
    terminate(this.ws);
  }
}

class LegacySession extends StompJsFamilySession {
  constructor(cmd) {
    super();
    const versions = cmd.versions ?? ['1.1', '1.0'];
    const [outgoing, incoming] = cmd.heartbeat ?? [0, 0];
    // CONNECT's accept-version comes from this global function.
    legacyStomp.VERSIONS.supportedVersions = () => versions.join(',');
    this.ws = openSocket(versions);
    const client = legacyStomp.over(this.ws);
    client.heartbeat.outgoing = outgoing;
    client.heartbeat.incoming = incoming;
    client.debug = DEBUG ? msg => debug('legacy:', msg) : null;
    // Its error callback gets the ERROR frame, or a string when the socket closes.
    this.start(client, cmd, () => this.ws.transport ?? null, arg => typeof arg !== 'string');
  }

  send(cmd) {
    this.requireConnected();
    this.client.send(cmd.destination, plainHeaders(cmd.headers), cmd.body ?? '');
  }
}

// --- webstomp-client 1.2.6 ----------------------------------------------------------------

// Its CONNECT's accept-version is the version of the subprotocol the server chose; it
// heart-beats only on 1.1 and 1.2. Its debug() writes to stdout: only to stderr here.
const WEBSTOMP_VERSIONS = ['1.0', '1.1', '1.2']; // its default offer: v10.stomp first

class WebstompSession extends StompJsFamilySession {
  constructor(cmd) {
    super();
    if (opts.transport) throw new Error('webstomp is driven over a raw WebSocket only');
    const webstomp = require('webstomp-client');
    const [outgoing, incoming] = cmd.heartbeat ?? [0, 0];
    this.ws = openSocket(WEBSTOMP_VERSIONS);
    this.ws.binaryType = 'arraybuffer'; // what the library expects of binary messages
    const client = webstomp.over(this.ws, {
      heartbeat: { outgoing, incoming },
      debug: false,
      protocols: protocolsFor(WEBSTOMP_VERSIONS), // its fallback if none was chosen
    });
    if (DEBUG) {
      client.hasDebug = true;
      client.debug = (...args) => debug('webstomp:', ...args);
    }
    // Its error callback gets the ERROR frame, or the close event (openSocket reports it).
    this.start(client, cmd, () => null, arg => arg?.command === 'ERROR');
  }

  send(cmd) {
    this.requireConnected();
    this.client.send(cmd.destination, cmd.body ?? '', plainHeaders(cmd.headers));
  }
}

// --- command loop ------------------------------------------------------------------------

let session = null;

function requireSession() {
  if (!session) throw new Error(`no connection (send "connect" first)`);
  return session;
}

function handle(cmd) {
  switch (cmd.op) {
    case 'connect':
      if (session) throw new Error("already connected (disconnect first)");
      session = new { legacy: LegacySession, webstomp: WebstompSession, stompjs7: StompJs7Session }[
        opts.lib
      ](cmd);
      return;
    case 'subscribe': {
      if (typeof cmd.id !== 'string' || typeof cmd.destination !== 'string') {
        throw new Error('subscribe needs string "id" and "destination"');
      }
      const headers = { ...plainHeaders(cmd.headers), id: cmd.id };
      headers.receipt ??= `subscribe-${cmd.id}`;
      requireSession().subscribe(cmd, headers);
      return;
    }
    case 'unsubscribe': {
      if (typeof cmd.id !== 'string') throw new Error('unsubscribe needs string "id"');
      const headers = { ...plainHeaders(cmd.headers), id: cmd.id };
      headers.receipt ??= `unsubscribe-${cmd.id}`;
      requireSession().unsubscribe(cmd, headers);
      return;
    }
    case 'send':
      if (typeof cmd.destination !== 'string') throw new Error('send needs "destination"');
      requireSession().send(cmd);
      return;
    case 'ack':
    case 'nack':
      requireSession().ack(cmd, cmd.op === 'nack');
      return;
    case 'disconnect':
      requireSession().disconnect();
      return;
    case 'drop':
      requireSession().drop();
      return;
    case 'exit':
      shutdown(0);
      return;
    default:
      throw new Error(`unknown op ${JSON.stringify(cmd.op)}`);
  }
}

function shutdown(code) {
  try {
    terminate(session?.ws);
  } catch (err) {
    debug('terminate on exit:', err);
  }
  process.exit(code);
}

process.on('uncaughtException', err => fatal(`uncaught: ${err?.stack ?? err}`));
process.on('unhandledRejection', err => fatal(`unhandled rejection: ${err?.stack ?? err}`));

const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
lines.on('line', line => {
  if (!line.trim()) return;
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (err) {
    fatal(`bad JSON on stdin: ${err.message}: ${line.slice(0, 200)}`);
    return;
  }
  if (cmd === null || typeof cmd !== 'object' || Array.isArray(cmd)) {
    fatal(`command must be a JSON object: ${line.slice(0, 200)}`);
    return;
  }
  debug('command', line);
  try {
    handle(cmd);
  } catch (err) {
    fatal(`${cmd.op ?? '?'}: ${err?.message ?? err}`);
  }
});
lines.on('close', () => shutdown(0));

emit({ event: 'ready', lib: opts.lib });
