// Tidings benchmark load generator.
//
// One Node process holds every client connection of a scenario and does the publishing, so
// it can pace publishes against deliveries. It speaks RFC 6455 itself over `net` sockets
// (no WebSocket library): frames are parsed in place, a delivery costs a header decode and a
// fixed-offset read of the timestamp the publisher embedded in the body. Protocols: STOMP
// 1.2 (Tidings, RabbitMQ Web-STOMP) and Engine.IO 4 / Socket.IO 5 (socket.io, python-socketio).
//
// Control: one JSON command per line on stdin, one JSON reply per line on stdout
// ({"id": <same id>, "ok": true, ...} or {"id", "ok": false, "error"}). See bench/run.py.
//
// Message body (BODY_LEN bytes, ASCII):  ~T<16-digit µs>~P<2-digit phase>~S<10-digit seq>~xxx…
// The timestamp is CLOCK_MONOTONIC in µs (process.hrtime here, time.monotonic in Python),
// and it is the time the message was *scheduled* to be published, so a publisher or server
// that falls behind shows up in the latency (no coordinated omission).

import { spawn } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import net from "node:net";
import readline from "node:readline";

const BODY_LEN = 100;
const MARK = Buffer.from("~T");
const MAX_SAMPLES = 8_000_000;
const MAX_SEQ = 2_000_000;

// -- clock -------------------------------------------------------------------------------
function nowUs() {
  const t = process.hrtime();
  return t[0] * 1e6 + t[1] / 1e3;
}

// CPU time (clock ticks) of some processes, to report % of one core over exactly the
// measured window. `pids` maps a name to a pid; "loadgen" is this process. Each counts with
// its whole process tree (a PostgreSQL cluster's backends are the postmaster's children):
// utime + stime of every live process in it, plus cutime + cstime (children that ended and
// were reaped, such as a closed connection's backend).
let clkTck = 100;
function treeTicks(pid) {
  let ticks = 0;
  const todo = [pid];
  while (todo.length) {
    const current = todo.pop();
    let stat;
    try {
      stat = readFileSync(`/proc/${current}/stat`, "latin1");
    } catch (error) {
      if (current === pid) throw error;
      continue; // a child that ended meanwhile: its parent's cutime has it
    }
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    ticks += Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14]);
    try {
      for (const task of readdirSync(`/proc/${current}/task`)) {
        const children = readFileSync(`/proc/${current}/task/${task}/children`, "latin1");
        for (const child of children.split(" ")) if (child) todo.push(Number(child));
      }
    } catch {
      // ended meanwhile
    }
  }
  return ticks;
}
function readTicks(pids) {
  const out = {};
  // Busy and total jiffies of each core (proc(5) /proc/stat), to show what else ran.
  for (const line of readFileSync("/proc/stat", "latin1").split("\n")) {
    const m = /^cpu(\d+) (.*)$/.exec(line);
    if (!m) continue;
    const v = m[2].trim().split(/\s+/).map(Number);
    const total = v.slice(0, 8).reduce((a, b) => a + b, 0);
    out[`core${m[1]}`] = { busy: total - v[3] - v[4], total };
  }
  for (const [name, pid] of Object.entries(pids || {})) {
    try {
      out[name] = treeTicks(pid);
    } catch {
      out[name] = null;
    }
  }
  return out;
}

function cpuBetween(a, aUs, b, bUs) {
  const out = {};
  const seconds = (bUs - aUs) / 1e6;
  for (const name of Object.keys(a)) {
    if (a[name] === null || b[name] === null) continue;
    if (typeof a[name] === "object") {
      const total = b[name].total - a[name].total;
      out[name] = total > 0 ? Math.round((1000 * (b[name].busy - a[name].busy)) / total) / 10 : null;
      continue;
    }
    out[name] = Math.round((1000 * (b[name] - a[name])) / clkTck / seconds) / 10;
  }
  return out;
}

function meterPids(spec) {
  return { ...(spec.meterPids || {}), loadgen: process.pid };
}

function makeBody(schedUs, phase, seq) {
  const head = `~T${String(Math.floor(schedUs)).padStart(16, "0")}~P${String(phase).padStart(2, "0")}~S${String(seq).padStart(10, "0")}~`;
  return head + "x".repeat(BODY_LEN - head.length);
}

// -- delivery accounting ------------------------------------------------------------------
const stats = {
  phase: -1, // deliveries of other phases are ignored (late arrivals of an earlier phase)
  delivered: 0,
  other: 0, // deliveries that belong to another phase
  recordLatency: false,
  samples: new Int32Array(MAX_SAMPLES),
  nSamples: 0,
  perSeq: new Uint16Array(MAX_SEQ),
  // Per message: latency of its first and of its last delivery (rate phases only).
  firstUs: new Float64Array(MAX_SEQ),
  lastUs: new Float64Array(MAX_SEQ),
  onDelivery: null, // hook for the saturation pump
};

function resetStats(phase, recordLatency) {
  stats.phase = phase;
  stats.delivered = 0;
  stats.other = 0;
  stats.recordLatency = recordLatency;
  stats.nSamples = 0;
  stats.perSeq.fill(0);
  if (recordLatency) {
    stats.firstUs.fill(0);
    stats.lastUs.fill(0);
  }
}

function digits(buf, at, n) {
  let v = 0;
  for (let k = 0; k < n; k++) {
    const c = buf[at + k] - 48;
    if (c < 0 || c > 9) return -1;
    v = v * 10 + c;
  }
  return v;
}

// Count every embedded body in buf[start:end) (normally exactly one).
function deliver(buf, start, end, now) {
  let i = buf.indexOf(MARK, end - BODY_LEN - 8 > start ? end - BODY_LEN - 8 : start);
  while (i !== -1 && i + 35 <= end) {
    const ts = digits(buf, i + 2, 16);
    const phase = digits(buf, i + 20, 2);
    const seq = digits(buf, i + 24, 10);
    if (phase === stats.phase) {
      stats.delivered++;
      if (stats.recordLatency && stats.nSamples < MAX_SAMPLES) {
        stats.samples[stats.nSamples++] = Math.round(now - ts);
      }
      if (seq >= 0 && seq < MAX_SEQ) {
        if (stats.recordLatency) {
          if (stats.perSeq[seq] === 0) stats.firstUs[seq] = now - ts;
          stats.lastUs[seq] = now - ts;
        }
        stats.perSeq[seq]++;
      }
    } else {
      stats.other++;
    }
    i = buf.indexOf(MARK, i + 35);
    if (i >= end) break;
  }
}

// -- WebSocket client over a raw socket ------------------------------------------------------
const WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="; // the server only checks its form (RFC 6455 §4.2.1)

function wsFrame(text, opcode = 1) {
  // Client frames must be masked; an all-zero key is valid and leaves the payload as is.
  const payload = typeof text === "string" ? Buffer.from(text) : text;
  const n = payload.length;
  let head;
  if (n < 126) {
    head = Buffer.alloc(6);
    head[1] = 0x80 | n;
  } else if (n < 65536) {
    head = Buffer.alloc(8);
    head[1] = 0x80 | 126;
    head.writeUInt16BE(n, 2);
  } else {
    head = Buffer.alloc(14);
    head[1] = 0x80 | 127;
    head.writeUInt32BE(n, 6);
  }
  head[0] = 0x80 | opcode;
  return Buffer.concat([head, payload]);
}

const all = new Set(); // every open client connection

// Every client socket reads into this one buffer (net's `onread`: no stream machinery, no
// Buffer per read). Reads are handled synchronously, so sharing it is safe; a partial frame
// left at the end of a read is copied out.
const SHARED = Buffer.allocUnsafe(1 << 18);

class WsConn {
  // proto: {kind: "stomp"|"sio", ...}; resolves `ready` once subscribed (or connected).
  constructor({ host, port, path, subprotocol, localAddress, proto, timeoutMs }) {
    this.proto = proto;
    this.rest = null;
    this.upgraded = false;
    this.closed = false;
    this.ready = new Promise((resolve, reject) => {
      this._resolve = resolve;
      this._reject = reject;
    });
    this.timer = setTimeout(() => this.fail("timeout"), timeoutMs);
    const sock = net.connect({
      host,
      port,
      localAddress,
      noDelay: true,
      onread: { buffer: SHARED, callback: (n, buf) => this.onData(buf.subarray(0, n)) },
    });
    this.sock = sock;
    sock.on("connect", () => {
      let req = `GET ${path} HTTP/1.1\r\nHost: ${host}:${port}\r\nUpgrade: websocket\r\n`;
      req += `Connection: Upgrade\r\nSec-WebSocket-Key: ${WS_KEY}\r\nSec-WebSocket-Version: 13\r\n`;
      if (subprotocol) req += `Sec-WebSocket-Protocol: ${subprotocol}\r\n`;
      sock.write(req + "\r\n");
    });
    sock.on("error", (err) => this.fail(err.code || "error"));
    sock.on("close", () => {
      this.closed = true;
      all.delete(this);
      this.fail("closed");
    });
  }

  fail(reason) {
    clearTimeout(this.timer);
    if (this._reject) {
      const reject = this._reject;
      this._reject = this._resolve = null;
      reject(new Error(reason));
      this.sock.destroy();
    }
  }

  succeed() {
    clearTimeout(this.timer);
    if (this._resolve) {
      const resolve = this._resolve;
      this._reject = this._resolve = null;
      all.add(this);
      resolve(this);
    }
  }

  send(text) {
    if (!this.closed) this.sock.write(wsFrame(text));
  }

  onData(chunk) {
    let buf = this.rest === null ? chunk : Buffer.concat([this.rest, chunk]);
    let off = 0;
    if (!this.upgraded) {
      const end = buf.indexOf("\r\n\r\n");
      if (end === -1) {
        this.rest = Buffer.from(buf);
        return;
      }
      if (buf.toString("latin1", 0, 12) !== "HTTP/1.1 101") {
        this.fail(`http ${buf.toString("latin1", 9, 12)}`);
        return;
      }
      this.upgraded = true;
      off = end + 4;
      this.proto.onOpen(this);
    }
    const now = nowUs();
    const len = buf.length;
    while (len - off >= 2) {
      const b0 = buf[off];
      const b1 = buf[off + 1];
      let plen = b1 & 0x7f;
      let hdr = 2;
      if (plen === 126) {
        if (len - off < 4) break;
        plen = buf.readUInt16BE(off + 2);
        hdr = 4;
      } else if (plen === 127) {
        if (len - off < 10) break;
        plen = buf.readUInt32BE(off + 6);
        hdr = 10;
      }
      if (b1 & 0x80) hdr += 4;
      if (len - off < hdr + plen) break;
      const start = off + hdr;
      const end = start + plen;
      const op = b0 & 0x0f;
      if (op <= 2) this.proto.onMessage(this, buf, start, end, now);
      else if (op === 9) this.sock.write(wsFrame(buf.subarray(start, end), 0xa));
      else if (op === 8) {
        this.closeInfo = buf.toString("utf8", start + 2, end);
        this.sock.end();
      }
      off = end;
    }
    this.rest = off < len ? Buffer.from(buf.subarray(off)) : null;
    if (stats.onDelivery !== null) stats.onDelivery();
  }
}

// -- protocols ------------------------------------------------------------------------------
// STOMP 1.2. flavor "tidings": login names the user; "rabbit": guest/guest on vhost "/".
function stompProto({ flavor, destination, user }) {
  const login =
    flavor === "rabbit" ? "login:guest\npasscode:guest\nhost:/\n" : `login:${user}\nhost:127.0.0.1\n`;
  return {
    onOpen(c) {
      c.send(`CONNECT\naccept-version:1.2\n${login}heart-beat:0,0\n\n\0`);
    },
    onMessage(c, buf, start, end, now) {
      const first = buf[start];
      if (first === 0x4d /* M */) deliver(buf, start, end, now);
      else if (first === 0x43 /* C */) {
        if (destination) c.send(`SUBSCRIBE\nid:0\ndestination:${destination}\nack:auto\nreceipt:s0\n\n\0`);
        else c.succeed();
      } else if (first === 0x52 /* R */) c.succeed();
      else if (first === 0x45 /* E */) {
        c.errorText = buf.toString("utf8", start, Math.min(end, start + 300));
        c.fail("stomp-error");
      }
    },
  };
}

// Engine.IO 4 over WebSocket, Socket.IO 5 packets; joins `room` with an acknowledged "sub".
function sioProto({ room }) {
  return {
    onOpen() {},
    onMessage(c, buf, start, end, now) {
      const t = buf[start];
      if (t === 0x34 /* 4 message */) {
        const p = buf[start + 1];
        if (p === 0x32 /* 2 EVENT */) deliver(buf, start, end, now);
        else if (p === 0x30 /* 0 CONNECT */) {
          if (room) c.send(`420["sub",${JSON.stringify(room)}]`);
          else c.succeed();
        } else if (p === 0x33 /* 3 ACK */) c.succeed();
        else if (p === 0x34 /* 4 CONNECT_ERROR */) c.fail("sio-connect-error");
      } else if (t === 0x32 /* 2 ping */) c.send("3");
      else if (t === 0x30 /* 0 open */) c.send("40");
    },
  };
}

const DEFAULT_SOURCES = Array.from({ length: 8 }, (_, k) => `127.0.0.${10 + k}`);

function fill(template, user) {
  return template === null || template === undefined ? null : template.replaceAll("{u}", String(user));
}

function newConn(spec, i) {
  const target = spec.targets[i % spec.targets.length];
  const user = (spec.userOffset || 0) + i;
  // Clients come from several loopback addresses, each with its own ephemeral port space,
  // so ports left in TIME_WAIT on 127.0.0.1 (by earlier runs or anything else on the
  // machine) do not slow the kernel's port search.
  const sources = spec.sources || DEFAULT_SOURCES;
  const localAddress = sources[Math.floor(i / (spec.perSource || 1)) % sources.length];
  const proto =
    spec.proto === "stomp"
      ? stompProto({ flavor: spec.flavor, destination: fill(spec.destination, user), user })
      : sioProto({ room: fill(spec.destination, user) });
  const path = spec.proto === "stomp" ? target.path : "/socket.io/?EIO=4&transport=websocket";
  return new WsConn({
    host: target.host || "127.0.0.1",
    port: target.port,
    path,
    subprotocol: spec.proto === "stomp" ? "v12.stomp" : null,
    localAddress,
    proto,
    timeoutMs: spec.timeoutMs || 15000,
  });
}

// Open spec.n connections, at most spec.concurrency handshakes at a time. Stops early after
// spec.stopAfterFailures consecutive failures or at spec.deadlineMs.
async function openMany(spec) {
  const t0 = nowUs();
  const ticks0 = readTicks(meterPids(spec));
  const deadline = Date.now() + (spec.deadlineMs || 120000);
  const errors = {};
  let next = 0;
  let opened = 0;
  let failed = 0;
  let consecutive = 0;
  let stop = false;
  const samples = [];
  let example = null;
  async function worker() {
    while (!stop && next < spec.n) {
      if (Date.now() > deadline) {
        stop = true;
        errors.deadline = (errors.deadline || 0) + 1;
        break;
      }
      const i = next++;
      const t = nowUs();
      const conn = newConn(spec, i);
      try {
        await conn.ready;
        opened++;
        consecutive = 0;
        if (samples.length < 100000) samples.push(nowUs() - t);
      } catch (err) {
        failed++;
        consecutive++;
        errors[err.message] = (errors[err.message] || 0) + 1;
        if (example === null && conn.errorText) example = conn.errorText;
        if (spec.stopAfterFailures && consecutive >= spec.stopAfterFailures) stop = true;
      }
    }
  }
  await Promise.all(Array.from({ length: spec.concurrency || 100 }, worker));
  const t1 = nowUs();
  const cpu = cpuBetween(ticks0, t0, readTicks(meterPids(spec)), t1);
  const elapsedMs = (t1 - t0) / 1000;
  return {
    cpuPct: cpu,
    opened,
    failed,
    errors,
    errorExample: example,
    elapsedMs,
    rate: opened / (elapsedMs / 1000),
    connectMs: percentiles(Int32Array.from(samples.map((v) => Math.round(v))), samples.length),
    open: all.size,
  };
}

function closeAll() {
  // RST instead of FIN: closing thousands of idle clients leaves no TIME_WAIT behind.
  const n = all.size;
  for (const c of all) c.sock.resetAndDestroy();
  all.clear();
  return n;
}

// -- publishers ------------------------------------------------------------------------------
// Minimal HTTP/1.1 keep-alive pool: one request in flight per socket, a shared queue.
class HttpPool {
  constructor(host, port, size) {
    this.host = host;
    this.port = port;
    this.queue = [];
    this.idle = [];
    this.ok = 0;
    this.errors = 0;
    this.statuses = {};
    for (let k = 0; k < size; k++) this.addSocket();
  }

  addSocket() {
    const s = net.connect({ host: this.host, port: this.port, noDelay: true });
    s.rest = null;
    s.busy = false;
    s.on("connect", () => this.release(s));
    s.on("data", (chunk) => this.onData(s, chunk));
    s.on("error", () => {});
    s.on("close", () => {
      if (s.busy) this.errors++;
      this.idle = this.idle.filter((x) => x !== s);
      if (!this.closing) setTimeout(() => this.addSocket(), 100);
    });
  }

  onData(s, chunk) {
    let buf = s.rest === null ? chunk : Buffer.concat([s.rest, chunk]);
    for (;;) {
      const h = buf.indexOf("\r\n\r\n");
      if (h === -1) break;
      const head = buf.toString("latin1", 0, h);
      const m = /content-length:\s*(\d+)/i.exec(head);
      const total = h + 4 + (m ? Number(m[1]) : 0);
      if (buf.length < total) break;
      const status = head.slice(9, 12);
      this.statuses[status] = (this.statuses[status] || 0) + 1;
      if (status[0] === "2") this.ok++;
      else this.errors++;
      buf = buf.subarray(total);
      s.busy = false;
      this.release(s);
    }
    s.rest = buf.length ? buf : null;
  }

  release(s) {
    const req = this.queue.shift();
    if (req === undefined) this.idle.push(s);
    else {
      s.busy = true;
      s.write(req);
    }
  }

  post(path, json) {
    const body = Buffer.from(json);
    const req = Buffer.concat([
      Buffer.from(
        `POST ${path} HTTP/1.1\r\nHost: ${this.host}:${this.port}\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n`,
      ),
      body,
    ]);
    const s = this.idle.pop();
    if (s === undefined) this.queue.push(req);
    else {
      s.busy = true;
      s.write(req);
    }
  }

  close() {
    this.closing = true;
  }
}

async function makePublisher(spec) {
  // Returns {publish(targetUser|null, body), pending(), info(), close()}.
  if (spec.kind === "http") {
    const pools = spec.targets.map((t) => new HttpPool(t.host || "127.0.0.1", t.port, spec.poolSize || 16));
    await new Promise((r) => setTimeout(r, 200));
    let rr = 0;
    // batchPath: the messages of one tick go as one request per node (round robin), as a
    // back end with a batch route would send them; else one request per message.
    let batches = null;
    const flushBatches = () => {
      batches.forEach((items, k) => {
        if (items.length) pools[k].post(spec.batchPath, `{"messages":[${items.join(",")}]}`);
      });
      batches = null;
    };
    return {
      publish(user, body) {
        if (spec.batchPath) {
          if (batches === null) {
            batches = pools.map(() => []);
            setImmediate(flushBatches);
          }
          const item = user === null ? `{"topic":"${spec.topicName}","body":"${body}"}` : `{"user":"${user}","body":"${body}"}`;
          batches[rr++ % pools.length].push(item);
          return;
        }
        const pool = pools[rr++ % pools.length];
        const path = user === null ? spec.topicPath : spec.userPath.replace("{u}", String(user));
        pool.post(path, `{"body":"${body}"}`);
      },
      pending: () => pools.reduce((a, p) => a + p.queue.length, 0),
      info: () => ({
        ok: pools.reduce((a, p) => a + p.ok, 0),
        errors: pools.reduce((a, p) => a + p.errors, 0),
        statuses: pools.map((p) => p.statuses),
      }),
      close() {
        for (const p of pools) {
          p.close();
          for (const s of p.idle) s.destroy();
        }
      },
    };
  }
  if (spec.kind === "sioemit") {
    const { createClient } = await import("redis");
    const { Emitter } = await import("@socket.io/redis-emitter");
    const client = createClient({ url: spec.redis });
    await client.connect();
    const emitter = new Emitter(client);
    let sent = 0;
    return {
      publish(user, body) {
        const room = user === null ? spec.topicRoom : spec.userRoom.replace("{u}", String(user));
        emitter.to(room).emit("m", body);
        sent++;
      },
      pending: () => 0,
      info: () => ({ ok: sent, errors: 0 }),
      close: () => client.quit().catch(() => {}),
    };
  }
  if (spec.kind === "pyhelper") {
    // A Python back-end library (python-socketio's write-only AsyncRedisManager, Tidings'
    // direct publisher) in a helper fed over stdin (bench/peers/stdin_feed.py); it
    // inherits this process's core.
    const child = spawn(spec.python, [spec.script, spec.redis], {
      stdio: ["pipe", "pipe", "inherit"],
      env: { ...process.env, ...(spec.env || {}) },
    });
    const lines = readline.createInterface({ input: child.stdout });
    const it = lines[Symbol.asyncIterator]();
    const first = await it.next();
    if (first.value !== "READY") throw new Error(`${spec.script}: ${first.value}`);
    let batch = [];
    let scheduled = false;
    let sent = 0;
    let lastInfo = { ok: 0, errors: 0 };
    let rateDone = null; // resolves runRate's promise
    (async () => {
      for (;;) {
        const r = await it.next();
        if (r.done) break;
        try {
          lastInfo = JSON.parse(r.value);
        } catch {
          continue;
        }
        if (lastInfo.rate_done && rateDone) {
          rateDone();
          rateDone = null;
        }
      }
    })();
    const flush = () => {
      scheduled = false;
      child.stdin.write(batch.join(""));
      batch = [];
    };
    return {
      pid: child.pid,
      publish(user, body) {
        const room = user === null ? spec.topicRoom : spec.userRoom.replace("{u}", String(user));
        batch.push(`${room}\t${body}\n`);
        sent++;
        if (!scheduled) {
          scheduled = true;
          setImmediate(flush);
        }
      },
      // The helper publishes a fixed-rate schedule itself (bench/peers/stdin_feed.py):
      // a back end's library runs in its own process, so no line per message.
      runRate(schedule) {
        sent += schedule.total;
        child.stdin.write(`!rate ${JSON.stringify({ ...schedule, userRoom: spec.userRoom, topicRoom: spec.topicRoom })}\n`);
        return new Promise((resolve) => {
          rateDone = resolve;
        });
      },
      pending: () => sent - lastInfo.ok - lastInfo.errors,
      info: () => ({ sent, ...lastInfo }),
      async close() {
        child.stdin.end();
        await new Promise((r) => child.on("exit", r));
      },
    };
  }
  if (spec.kind === "stomp") {
    // A back end's STOMP connection (RabbitMQ Web-STOMP): SEND to the destination.
    const conn = newConn({ ...spec, proto: "stomp", destination: null, n: 1 }, 0);
    await conn.ready;
    all.delete(conn);
    let sent = 0;
    return {
      publish(user, body) {
        const dest = user === null ? spec.topicDest : spec.userDest.replace("{u}", String(user));
        conn.send(`SEND\ndestination:${dest}\ncontent-type:text/plain\ncontent-length:${BODY_LEN}\n\n${body}\0`);
        sent++;
      },
      pending: () => 0,
      info: () => ({ ok: sent, errors: 0, writableLength: conn.sock.writableLength }),
      close: () => conn.sock.end(),
    };
  }
  throw new Error(`unknown publisher kind ${spec.kind}`);
}

let publisher = null;

// -- measurements ------------------------------------------------------------------------------
function percentiles(arr, n) {
  if (n === 0) return null;
  const a = arr.subarray(0, n).slice().sort();
  const at = (q) => a[Math.min(n - 1, Math.floor(q * n))];
  let sum = 0;
  for (let k = 0; k < n; k++) sum += a[k];
  return {
    n,
    min: a[0],
    p50: at(0.5),
    p90: at(0.9),
    p99: at(0.99),
    p999: at(0.999),
    max: a[n - 1],
    mean: sum / n,
  };
}

// Latency CDF points for the charts (µs at 200 evenly spaced quantiles, log-friendly).
function cdf(arr, n) {
  if (n === 0) return [];
  const a = arr.subarray(0, n).slice().sort();
  const out = [];
  for (let k = 0; k <= 200; k++) {
    const q = k / 200;
    out.push([q, a[Math.min(n - 1, Math.floor(q * (n - 1)))]]);
  }
  return out;
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

// Fixed-rate publishing: message i is due at t0 + i/rate; its body carries that time.
async function runRate(spec) {
  const { rate, seconds, phase, fanout } = spec;
  const total = Math.round(rate * seconds);
  resetStats(phase, true);
  const t0 = nowUs() + 50000;
  let i = 0;
  let ticks0 = null;
  let ticks0Us = 0;
  const users = spec.users || 0;
  let rng = 12345;
  const nextUser = () => {
    rng = (Math.imul(rng, 1103515245) + 12345) >>> 0;
    return (spec.userOffset || 0) + (rng % users);
  };
  if (publisher.runRate) {
    const target = spec.target === "user" ? "user" : "topic";
    const done = publisher.runRate({ rate, total, t0, phase, users, userOffset: spec.userOffset || 0, target });
    await sleep(Math.max(0, (t0 - nowUs()) / 1000));
    ticks0 = readTicks(meterPids(spec));
    ticks0Us = nowUs();
    await done;
    i = total;
  } else {
    await tickPublish();
  }
  async function tickPublish() {
    await new Promise((resolve) => {
      const tick = () => {
        const now = nowUs();
        if (ticks0 === null) {
          ticks0 = readTicks(meterPids(spec));
          ticks0Us = now;
        }
        const due = Math.min(total, Math.floor(((now - t0) * rate) / 1e6) + 1);
        while (i < due) {
          const sched = t0 + (i * 1e6) / rate;
          publisher.publish(spec.target === "user" ? nextUser() : null, makeBody(sched, phase, i));
          i++;
        }
        if (i < total) setTimeout(tick, 1);
        else resolve();
      };
      setTimeout(tick, 50);
    });
  }
  const pubEnd = nowUs();
  const cpu = cpuBetween(ticks0, ticks0Us, readTicks(meterPids(spec)), pubEnd);
  const expected = total * fanout;
  const drainUntil = Date.now() + (spec.drainMs || 10000);
  while (stats.delivered < expected && Date.now() < drainUntil) await sleep(20);
  const finish = nowUs();
  // Give the publisher's replies a moment, then count.
  await sleep(50);
  let unique = 0;
  let dup = 0;
  let missingMsgs = 0;
  for (let k = 0; k < total; k++) {
    const c = stats.perSeq[k];
    if (c === 0) missingMsgs++;
    if (fanout === 1) {
      if (c >= 1) unique++;
      if (c > 1) dup += c - 1;
    } else unique += Math.min(c, fanout);
  }
  // Time to a message's first delivery, and the spread from its first to its last one.
  const firsts = new Int32Array(total);
  const spreads = new Int32Array(total);
  let nSeen = 0;
  for (let k = 0; k < total; k++) {
    if (stats.perSeq[k] === 0) continue;
    firsts[nSeen] = Math.round(stats.firstUs[k]);
    spreads[nSeen] = Math.round(stats.lastUs[k] - stats.firstUs[k]);
    nSeen++;
  }
  return {
    firstDeliveryUs: percentiles(firsts, nSeen),
    spreadUs: percentiles(spreads, nSeen),
    published: total,
    publishSeconds: (pubEnd - t0) / 1e6,
    achievedRate: total / ((pubEnd - t0) / 1e6),
    expected,
    delivered: stats.delivered,
    unique,
    duplicates: dup,
    lost: expected - unique,
    messagesNeverSeen: missingMsgs,
    drainSeconds: (finish - pubEnd) / 1e6,
    otherPhase: stats.other,
    latencyUs: percentiles(stats.samples, stats.nSamples),
    cdfUs: cdf(stats.samples, stats.nSamples),
    cpuPct: cpu,
    publisher: publisher.info(),
  };
}

// Saturation: keep at most `window` messages in flight (published but not yet delivered to
// every subscriber) for `seconds`; report deliveries/s after `warmup` seconds.
async function runSaturate(spec) {
  const { seconds, warmup, window: win, phase, fanout } = spec;
  resetStats(phase, false);
  let published = 0;
  const tStart = nowUs();
  const tWarm = tStart + warmup * 1e6;
  const tEnd = tStart + seconds * 1e6;
  let publishing = true;
  const pump = () => {
    if (!publishing) return;
    const now = nowUs();
    if (now >= tEnd || published >= MAX_SEQ) {
      publishing = false;
      return;
    }
    while (published - stats.delivered / fanout < win && published < MAX_SEQ) {
      publisher.publish(null, makeBody(now, phase, published));
      published++;
    }
  };
  stats.onDelivery = pump;
  pump();
  const timer = setInterval(pump, 5);
  const marks = [];
  let warmMark = null;
  let ticks0 = null;
  while (nowUs() < tEnd) {
    await sleep(20);
    const t = nowUs();
    if (warmMark === null && t >= tWarm) {
      warmMark = [t, stats.delivered];
      ticks0 = readTicks(meterPids(spec));
    }
    marks.push([(t - tStart) / 1e6, stats.delivered]);
  }
  const endMark = [nowUs(), stats.delivered];
  const cpu = cpuBetween(ticks0, warmMark[0], readTicks(meterPids(spec)), endMark[0]);
  publishing = false;
  clearInterval(timer);
  stats.onDelivery = null;
  const expected = published * fanout;
  const drainUntil = Date.now() + (spec.drainMs || 15000);
  while (stats.delivered < expected && Date.now() < drainUntil) await sleep(20);
  let unique = 0;
  for (let k = 0; k < published; k++) unique += Math.min(stats.perSeq[k], fanout);
  // Per-second series for the charts.
  const series = [];
  let prev = [0, 0];
  for (const m of marks) {
    if (m[0] - prev[0] >= 0.5) {
      series.push([m[0], (m[1] - prev[1]) / (m[0] - prev[0])]);
      prev = m;
    }
  }
  return {
    published,
    expected,
    delivered: stats.delivered,
    lost: expected - unique,
    rate: (endMark[1] - warmMark[1]) / ((endMark[0] - warmMark[0]) / 1e6),
    measuredSeconds: (endMark[0] - warmMark[0]) / 1e6,
    cpuPct: cpu,
    series,
    publisher: publisher.info(),
  };
}

// -- command loop --------------------------------------------------------------------------
const handlers = {
  async config(spec) {
    clkTck = spec.clkTck || 100;
    return {};
  },
  async open(spec) {
    return openMany(spec);
  },
  async close() {
    return { closed: closeAll() };
  },
  async count() {
    let live = 0;
    for (const c of all) if (!c.closed) live++;
    return { open: live };
  },
  async publisher(spec) {
    if (publisher) await publisher.close();
    publisher = await makePublisher(spec);
    return { pid: publisher.pid || null };
  },
  async closePublisher() {
    if (publisher) await publisher.close();
    publisher = null;
    return {};
  },
  async rate(spec) {
    return runRate(spec);
  },
  async saturate(spec) {
    return runSaturate(spec);
  },
  async exit() {
    closeAll();
    if (publisher) await publisher.close();
    setTimeout(() => process.exit(0), 50);
    return {};
  },
};

const rl = readline.createInterface({ input: process.stdin });
rl.on("line", async (line) => {
  let msg;
  try {
    msg = JSON.parse(line);
  } catch {
    return;
  }
  const reply = (obj) => process.stdout.write(JSON.stringify({ id: msg.id, ...obj }) + "\n");
  try {
    const handler = handlers[msg.cmd];
    if (!handler) throw new Error(`unknown command ${msg.cmd}`);
    reply({ ok: true, ...(await handler(msg)) });
  } catch (err) {
    reply({ ok: false, error: String(err && err.stack ? err.stack : err) });
  }
});
rl.on("close", () => {
  closeAll();
  process.exit(0);
});
process.stdout.write(JSON.stringify({ id: 0, ok: true, ready: true, pid: process.pid }) + "\n");
