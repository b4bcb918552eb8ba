#!/usr/bin/env node
// A scriptable headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core),
// for tests that need a real browser (tests/browser.py drives it).
//
//   node tests/js/browser.mjs --user-data-dir DIR [--executable /usr/bin/chromium]
//
// stdin: one JSON command per line; stdout: one JSON event per line and nothing else.
//
// Commands (each may carry an "id", echoed in its answer)   Answer
//   {"op":"serve","url":U,"html":H}   later loads of U get H    {"event":"done"}
//                                     (the page then has U's origin, without a server)
//   {"op":"goto","url":U}                                       {"event":"done"}
//   {"op":"eval","expression":E}      E is awaited in the page  {"event":"value","value":V}
//   {"op":"wait","expression":E,"timeout":ms}                   {"event":"value","value":V}
//                                     until E is truthy
//   {"op":"click","selector":S}                                 {"event":"done"}
//   {"op":"fill","selector":S,"value":V}                        {"event":"done"}
//   {"op":"screenshot","path":P[,"full":true]}  (full: the whole page)  {"event":"done"}
//   {"op":"viewport","width":W,"height":H}  resize the page     {"event":"done"}
//   {"op":"exit"}  (also on stdin EOF)                          the process exits 0
// A failed command answers {"event":"failed","message":..}. Unprompted events:
// ready {version}, console {type, text}, pageerror {message}, fatal {message}.
//
// Never downloads a browser: it launches the system's Chromium with the flags below.

import readline from 'node:readline';
import { parseArgs } from 'node:util';

import { chromium } from 'playwright-core';

const { values: opts } = parseArgs({
  options: {
    'user-data-dir': { type: 'string' },
    executable: { type: 'string', default: '/usr/bin/chromium' },
  },
});
if (!opts['user-data-dir']) {
  process.stderr.write('usage: browser.mjs --user-data-dir DIR [--executable PATH]\n');
  process.exit(2);
}

function emit(event) {
  process.stdout.write(`${JSON.stringify(event)}\n`);
}

const FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

const context = await chromium.launchPersistentContext(opts['user-data-dir'], {
  executablePath: opts.executable,
  headless: true,
  args: FLAGS,
  viewport: { width: 1000, height: 760 },
});
const page = context.pages()[0] ?? (await context.newPage());
page.on('console', msg => emit({ event: 'console', type: msg.type(), text: msg.text() }));
page.on('pageerror', err => emit({ event: 'pageerror', message: String(err?.stack ?? err) }));

async function handle(cmd) {
  switch (cmd.op) {
    case 'serve':
      await context.route(cmd.url, route =>
        route.fulfill({ status: 200, contentType: 'text/html; charset=utf-8', body: cmd.html }),
      );
      return { event: 'done' };
    case 'goto':
      await page.goto(cmd.url, { waitUntil: 'load' });
      return { event: 'done' };
    case 'eval':
      return { event: 'value', value: await page.evaluate(cmd.expression) };
    case 'wait': {
      const handle = await page.waitForFunction(cmd.expression, null, {
        timeout: cmd.timeout ?? 10000,
        polling: 50,
      });
      return { event: 'value', value: await handle.jsonValue() };
    }
    case 'click':
      await page.click(cmd.selector);
      return { event: 'done' };
    case 'fill':
      await page.fill(cmd.selector, cmd.value);
      return { event: 'done' };
    case 'screenshot':
      await page.screenshot({ path: cmd.path, fullPage: Boolean(cmd.full) });
      return { event: 'done' };
    case 'viewport':
      await page.setViewportSize({ width: cmd.width, height: cmd.height });
      return { event: 'done' };
    case 'exit':
      await shutdown();
      return null;
    default:
      throw new Error(`unknown op ${JSON.stringify(cmd.op)}`);
  }
}

let closing = false;
async function shutdown() {
  if (closing) return;
  closing = true;
  try {
    await context.close();
  } finally {
    process.exit(0);
  }
}

// Commands run one at a time, in order.
let queue = Promise.resolve();
const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
lines.on('line', line => {
  if (!line.trim()) return;
  queue = queue.then(async () => {
    let cmd;
    try {
      cmd = JSON.parse(line);
    } catch (err) {
      emit({ event: 'fatal', message: `bad JSON on stdin: ${err.message}` });
      return;
    }
    try {
      const answer = await handle(cmd);
      if (answer) emit({ ...answer, id: cmd.id ?? null });
    } catch (err) {
      emit({ event: 'failed', id: cmd.id ?? null, message: String(err?.message ?? err) });
    }
  });
});
lines.on('close', () => {
  queue = queue.then(shutdown);
});

emit({ event: 'ready', version: context.browser()?.version() ?? null });
