// tidings.js: the browser SDK of a Tidings node, an ES module served at /tidings.js.
//
//   import { connect } from "/tidings.js";
//   const center = connect({ user: "42" });                  // or { token: "<jwt>" | async () => "<jwt>" }
//   center.addEventListener("notification", (e) => show(e.detail));
//   center.addEventListener("unread", (e) => badge(e.detail));
//   center.markRead([id]);  center.markAllRead();  center.close();
//
// It speaks STOMP 1.2 through the @stomp/stompjs bundle the node ships (/vendor/), on a
// WebSocket, falling back to SockJS (/vendor/sockjs.min.js) when WebSockets fail. After every
// reconnect each subscription resumes from the last tidings-id this browser handled (kept
// in localStorage per user and destination), so nothing published meanwhile is missed and
// nothing is shown twice. User messages are acknowledged (ack:client-individual) once the
// "notification" listeners ran; a first visit gets what the user has not acknowledged yet.
// The unread count comes from /user/queue/inbox-state (the current state, then changes).
// With a token, a first visit (no last id kept yet) first reads the user's history from
// GET /api/v1/me/inbox, so the bell shows past notifications too (detail.history: true).
// docs/notification-center.md walks through it.

const STATE_DESTINATION = "/user/queue/inbox-state";
const READ_DESTINATION = "/app/inbox/read";
const RESUME_HEADER = "tidings-resume-after";
const ID_HEADER = "tidings-id";
const GAP_HEADER = "tidings-gap";
const WEBSOCKET_FAILURES_BEFORE_SOCKJS = 2;
const HISTORY_PAGE = 1000;  // the most GET /api/v1/me/inbox answers at once

/** -1, 0 or 1 as inbox id a ("<ms>-<seq>") is before, equal to or after b. */
export function compareIds(a, b) {
  const [am, as] = a.split("-").map(Number);
  const [bm, bs] = b.split("-").map(Number);
  return Math.sign(am - bm || as - bs);
}

/** -1, 0 or 1 as an inbox-state's `last` a is before, equal to or after b (null first). */
function compareLast(a, b) {
  if (a === null || b === null) return Number(a !== null) - Number(b !== null);
  return compareIds(a, b);
}

const MAX_UNCOUNTED = 1000;  // new ids kept for a later state to recount; past it the oldest go

/**
 * The unread count from /user/queue/inbox-state events ({unread, last, ...}: the count and
 * the newest inbox id it took in) and the user's new messages (each adds one). A state event
 * computed before the one applied (a smaller `last`, or the same one with a greater count:
 * reads only lower it) is ignored, whatever order the events and messages arrive in.
 */
export class UnreadCount {
  #state = null;     // {unread, last} of the newest state applied; null before the first
  #uncounted = [];   // ids of messages received that #state does not count, oldest first

  /** The count, or null before the first state. */
  get value() {
    return this.#state === null ? null : this.#state.unread + this.#uncounted.length;
  }

  /** Apply an inbox-state event; false if it was older than the state applied. */
  state(event) {
    if (typeof event?.unread !== "number") return false;
    const next = { unread: event.unread, last: event.last ?? null };
    if (this.#state !== null) {
      const order = compareLast(next.last, this.#state.last);
      if (order < 0 || (order === 0 && next.unread > this.#state.unread)) return false;
    }
    this.#state = next;
    this.#uncounted = this.#uncounted.filter((id) => compareLast(id, next.last) > 0);
    return true;
  }

  /** A stored message of the user arrived; false if the state applied already counts it. */
  message(id) {
    if (this.#state !== null && compareLast(id, this.#state.last) <= 0) return false;
    if (this.#uncounted.includes(id)) return false;
    this.#uncounted.push(id);
    if (this.#uncounted.length > MAX_UNCOUNTED) this.#uncounted.shift();
    return true;
  }

  /** Forget everything (a new connection: its first state starts the count again). */
  reset() {
    this.#state = null;
    this.#uncounted = [];
  }
}

/** Load a classic script once (the vendored bundles define globals). */
const loading = new Map();
function loadScript(src) {
  if (!loading.has(src)) {
    loading.set(src, new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = src;
      script.onload = resolve;
      script.onerror = () => reject(new Error(`could not load ${src}`));
      document.head.append(script);
    }));
  }
  return loading.get(src);
}

class MemoryStorage {
  #items = new Map();
  getItem(key) { return this.#items.has(key) ? this.#items.get(key) : null; }
  setItem(key, value) { this.#items.set(key, String(value)); }
}

/**
 * Open a notification center. Options (all optional but user or token):
 *   user          the CONNECT login (--auth none)
 *   token         a JWT, or an async function returning a fresh one before each connect
 *   url           the node or balancer, default the page's origin
 *   endpoint      the raw WebSocket endpoint, default "/stomp"
 *   sockjs        the SockJS endpoint for the fallback, default "/publicServer"; null: none
 *   transport     "auto" (default: WebSocket, then SockJS), "websocket" or "sockjs"
 *   destination   the user's messages, default `/user/${user}/message` (with a token: "/user/message")
 *   topics        topic destinations to receive too, e.g. ["/topic/public"]
 *   storage       where last ids are kept, default localStorage
 *   reconnectDelay ms between reconnects, default 1000
 * Events: "notification" (detail: {id, body, json(), headers, destination, topic, gap,
 * history}: history is true for what a first visit read from /api/v1/me/inbox),
 * "unread" (detail: the count), "status" (detail: {state, transport, error}).
 */
export function connect(options = {}) {
  return new NotificationCenter(options);
}

export class NotificationCenter extends EventTarget {
  #options;
  #client = null;
  #storage;
  #unread = new UnreadCount();
  #shown = null;  // the count last reported, kept across a reconnect until its first state
  #failures = 0;
  #transport;
  #closed = false;
  #lastIds = new Map();

  constructor(options) {
    super();
    if (!options.user && !options.token) throw new Error("connect() needs a user or a token");
    const base = (options.url ?? location.origin).replace(/\/$/, "");
    this.#options = {
      endpoint: "/stomp",
      sockjs: "/publicServer",
      transport: "auto",
      topics: [],
      reconnectDelay: 1000,
      destination: options.user ? `/user/${options.user}/message` : "/user/message",
      ...options,
      base,
    };
    this.#storage = options.storage ?? safeLocalStorage();
    this.#transport = this.#options.transport === "sockjs" ? "sockjs" : "websocket";
    this.ready = this.#start();
  }

  /** The unread count the node last reported (null before the first report). */
  get unread() { return this.#shown; }

  /** "websocket" or "sockjs": what the current or next connection uses. */
  get transport() { return this.#transport; }

  get connected() { return Boolean(this.#client?.connected); }

  /** Mark these inbox ids read; every device of the user gets the new count. */
  markRead(ids) {
    this.#send(READ_DESTINATION, JSON.stringify({ ids }));
  }

  /** Mark everything up to the newest message this browser handled read. */
  markAllRead() {
    const last = this.#lastIds.get(this.#options.destination);
    if (last) this.#send(READ_DESTINATION, JSON.stringify({ up_to: last }));
  }

  async close() {
    this.#closed = true;
    await this.#client?.deactivate();
    this.#status("closed");
  }

  async #start() {
    const { base } = this.#options;
    if (!globalThis.StompJs) await loadScript(`${base}/vendor/stomp.umd.min.js`);
    if (this.#transport === "sockjs") await this.#loadSockJS();
    // Without it the bell still gets what is unacknowledged, as on any first visit.
    await this.#history().catch((error) => console.warn("tidings.js: no history:", error));
    const client = new globalThis.StompJs.Client({
      webSocketFactory: () => this.#socket(),
      reconnectDelay: this.#options.reconnectDelay,
      heartbeatIncoming: 10000,
      heartbeatOutgoing: 10000,
      beforeConnect: () => this.#beforeConnect(client),
    });
    client.onConnect = () => this.#onConnect(client);
    client.onStompError = (frame) => this.#status("error", frame.headers.message || "server error");
    client.onWebSocketClose = () => this.#onClose(client);
    this.#client = client;
    this.#status("connecting");
    client.activate();
  }

  // A first visit with a token: the retained messages, oldest first, then live ones
  // resume after the newest of them (the STOMP subscription starts from the last id).
  async #history() {
    const { base, token, destination } = this.#options;
    if (!token || this.#lastId(destination) !== null) return;
    const bearer = typeof token === "function" ? await token() : token;
    let after = "0";
    for (;;) {
      const url = `${base}/api/v1/me/inbox?after=${after}&limit=${HISTORY_PAGE}`;
      const reply = await fetch(url, { headers: { Authorization: `Bearer ${bearer}` } });
      if (!reply.ok) throw new Error(`${url}: ${reply.status}`);
      const { messages } = await reply.json();
      for (const stored of messages) this.#showStored(stored);
      if (messages.length < HISTORY_PAGE) return;
      after = messages.at(-1).id;
    }
  }

  #showStored(stored) {
    const json = stored.content_type.startsWith("application/json");
    const body = json ? JSON.stringify(stored.body) : stored.body;
    const detail = {
      id: stored.id,
      body,
      headers: { ...stored.headers, [ID_HEADER]: stored.id },
      destination: stored.destination,
      topic: false,
      gap: false,
      history: true,
      read: stored.read,
      json() { return JSON.parse(body); },
    };
    this.dispatchEvent(new CustomEvent("notification", { detail }));
    this.#remember(this.#options.destination, stored.id);
  }

  async #beforeConnect(client) {
    const headers = {};
    const { user, token } = this.#options;
    if (user) headers.login = user;
    if (token) headers.Authorization = `Bearer ${typeof token === "function" ? await token() : token}`;
    client.connectHeaders = headers;
  }

  #socket() {
    const { base, endpoint, sockjs } = this.#options;
    if (this.#transport === "sockjs" && globalThis.SockJS) return new globalThis.SockJS(base + sockjs);
    const url = base.replace(/^http/, "ws") + endpoint;
    return new WebSocket(url, ["v12.stomp", "v11.stomp", "v10.stomp"]);
  }

  #onClose(client) {
    if (this.#closed) return;
    if (!client.connected && this.#transport === "websocket") this.#failures += 1;
    const { transport, sockjs } = this.#options;
    if (transport === "auto" && sockjs && this.#failures >= WEBSOCKET_FAILURES_BEFORE_SOCKJS) {
      this.#loadSockJS().then(() => { this.#transport = "sockjs"; }, () => {});
    }
    this.#status("reconnecting");
  }

  #loadSockJS() {
    return globalThis.SockJS ? Promise.resolve() : loadScript(`${this.#options.base}/vendor/sockjs.min.js`);
  }

  #onConnect(client) {
    this.#failures = 0;
    this.#status("connected");
    const user = this.#options.destination;
    this.#subscribe(client, user, "client-individual");
    for (const topic of this.#options.topics) this.#subscribe(client, topic, "auto");
    this.#unread.reset();
    client.subscribe(STATE_DESTINATION, (frame) => this.#onState(JSON.parse(frame.body)));
  }

  #subscribe(client, destination, ack) {
    const headers = { ack };
    const last = this.#lastId(destination);
    // Without a resume id an ack subscription first gets what the user has not acknowledged
    // (offline delivery); with one, what was stored after it.
    if (last) headers[RESUME_HEADER] = last;
    client.subscribe(destination, (frame) => this.#deliver(destination, frame, ack), headers);
  }

  #deliver(destination, frame, ack) {
    const id = frame.headers[ID_HEADER] ?? null;
    const last = this.#lastId(destination);
    const seen = id !== null && last !== null && compareIds(id, last) <= 0;
    if (!seen) {
      const topic = destination.startsWith("/topic/");
      const detail = {
        id,
        body: frame.body,
        headers: frame.headers,
        destination: frame.headers.destination,
        topic,
        gap: frame.headers[GAP_HEADER] === "true",
        history: false,
        json() { return JSON.parse(frame.body); },
      };
      this.dispatchEvent(new CustomEvent("notification", { detail }));
      if (id !== null) this.#remember(destination, id);
      if (!topic && id !== null) this.#countNew(id);
    }
    if (ack !== "auto") frame.ack();
  }

  #lastId(destination) {
    if (!this.#lastIds.has(destination)) {
      this.#lastIds.set(destination, this.#storage.getItem(this.#key(destination)));
    }
    return this.#lastIds.get(destination);
  }

  #remember(destination, id) {
    this.#lastIds.set(destination, id);
    this.#storage.setItem(this.#key(destination), id);
  }

  #key(destination) {
    return `tidings:last:${this.#options.user ?? "token"}:${destination}`;
  }

  // Every state carries "last", the newest id its count took in: one computed before the
  // one applied is ignored, and messages above it are added (issue 16).
  #onState(state) {
    if (this.#unread.state(state)) this.#changed();
  }

  #countNew(id) {
    if (this.#unread.message(id) && this.#unread.value !== null) this.#changed();
  }

  #changed() {
    this.#shown = this.#unread.value;
    this.dispatchEvent(new CustomEvent("unread", { detail: this.#shown }));
  }

  #send(destination, body) {
    if (!this.#client?.connected) throw new Error("not connected");
    this.#client.publish({ destination, body, headers: { "content-type": "application/json" } });
  }

  #status(state, error = null) {
    const detail = { state, transport: this.#transport, error };
    this.dispatchEvent(new CustomEvent("status", { detail }));
  }
}

function safeLocalStorage() {
  try {
    const probe = "tidings:probe";
    localStorage.setItem(probe, "1");
    localStorage.removeItem(probe);
    return localStorage;
  } catch {
    return new MemoryStorage();  // private mode or storage disabled: this tab only
  }
}
