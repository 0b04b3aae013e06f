// A Playwright (playwright-core) driver for the Python end-to-end tests (tests/browser.py): one JSON command
// per line on stdin, one JSON answer per line on stdout. It drives Debian's Chromium (/usr/bin/chromium);
// Playwright never downloads a browser here. Logs go to stderr.
import { createInterface } from 'node:readline';
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import { chromium } from 'playwright-core';

const require = createRequire(import.meta.url);
const AXE = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

const executablePath = process.env.TRAINSCOPE_CHROMIUM || '/usr/bin/chromium';
// Playwright gives every launch a fresh, empty --user-data-dir of its own.
const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});

const pages = new Map();

function call(expression, arg) {
  return `(${expression})(${JSON.stringify(arg ?? null)})`;
}
let nextPage = 0;

async function newPage({ viewport = { width: 1280, height: 900 }, initScript = null }) {
  const context = await browser.newContext({ viewport, acceptDownloads: true });
  // a script run in every document before the page's own (bench/bench_dashboard.py observes the table with it)
  if (initScript) await context.addInitScript(initScript);
  const page = await context.newPage();
  const id = `p${++nextPage}`;
  const entry = { page, context, requests: [], console: [], errors: [] };
  page.on('request', (r) => entry.requests.push({ url: r.url(), method: r.method(), type: r.resourceType() }));
  page.on('console', (m) => entry.console.push({ type: m.type(), text: m.text() }));
  page.on('pageerror', (e) => entry.errors.push(String(e && e.stack ? e.stack : e)));
  pages.set(id, entry);
  return id;
}

function get(id) {
  const entry = pages.get(id);
  if (!entry) throw new Error(`no page ${id}`);
  return entry;
}

const commands = {
  newPage,
  async goto({ page, url }) { await get(page).page.goto(url, { waitUntil: 'load' }); return get(page).page.url(); },
  async url({ page }) { return get(page).page.url(); },
  // `expression` is a function's source, called with `arg`. A string expression goes through the DevTools
  // protocol, which the page's Content-Security-Policy (no 'unsafe-eval') does not restrict; so the tests run
  // the page under its real CSP.
  async evaluate({ page, expression, arg }) {
    return get(page).page.evaluate(call(expression, arg));
  },
  async waitForFunction({ page, expression, arg, timeoutMs = 15000 }) {
    const p = get(page).page;
    const deadline = Date.now() + timeoutMs;
    let last;
    let lastError = null;
    for (;;) {
      // While a view is being replaced (a hash navigation renders on the next task), the element a condition
      // reads may not exist yet: a TypeError counts as "not yet", and is reported if the deadline passes.
      try {
        last = await p.evaluate(call(expression, arg));
        lastError = null;
      } catch (e) {
        if (!String(e && e.message).includes('TypeError')) throw e;
        last = null;
        lastError = e;
      }
      if (last) return last;
      if (Date.now() > deadline) {
        throw new Error(`waitForFunction: timed out after ${timeoutMs} ms: ${expression}`
          + (lastError ? `; last error: ${lastError.message}` : ''));
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  },
  async click({ page, selector }) { await get(page).page.click(selector); return true; },
  // Click something that offers a file; answers the file's suggested name and text.
  async download({ page, selector }) {
    const p = get(page).page;
    const [dl] = await Promise.all([p.waitForEvent('download'), p.click(selector)]);
    return { name: dl.suggestedFilename(), text: readFileSync(await dl.path(), 'utf8') };
  },
  async check({ page, selector }) { await get(page).page.check(selector); return true; },
  async fill({ page, selector, value }) { await get(page).page.fill(selector, value); return true; },
  async press({ page, key }) { await get(page).page.keyboard.press(key); return true; },
  async box({ page, selector }) {
    const loc = get(page).page.locator(selector).first();
    await loc.scrollIntoViewIfNeeded();
    return loc.boundingBox();
  },
  async drag({ page, from, to, steps = 8 }) {
    const { mouse } = get(page).page;
    await mouse.move(from[0], from[1]);
    await mouse.down();
    await mouse.move(to[0], to[1], { steps });
    await mouse.up();
    return true;
  },
  async screenshot({ page, path, fullPage = true }) { await get(page).page.screenshot({ path, fullPage }); return path; },
  async requests({ page }) { return get(page).requests; },
  async clearRequests({ page }) { get(page).requests.length = 0; return true; },
  async logs({ page }) { const e = get(page); return { console: e.console, errors: e.errors }; },
  async route({ page, pattern, status = 200, body, contentType = 'application/json' }) {
    await get(page).page.route(pattern, (r) => r.fulfill({ status, body, contentType }));
    return true;
  },
  async axe({ page, options }) {
    const p = get(page).page;
    await p.evaluate(AXE); // evaluated through the DevTools protocol: the page's CSP does not apply
    return p.evaluate((opts) => window.axe.run(document, opts).then((r) => ({
      violations: r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help,
        nodes: v.nodes.map((n) => ({ target: n.target, summary: n.failureSummary })) })),
      passes: r.passes.map((v) => v.id),
    })), options || {});
  },
  async closePage({ page }) { const e = get(page); pages.delete(page); await e.context.close(); return true; },
  async version() { return { browser: browser.version(), playwright: require('playwright-core/package.json').version }; },
};

const rl = createInterface({ input: process.stdin });
const send = (msg) => process.stdout.write(`${JSON.stringify(msg)}\n`);
send({ id: 0, ok: true, result: 'ready' });
for await (const line of rl) {
  if (!line.trim()) continue;
  let msg;
  try { msg = JSON.parse(line); } catch { continue; }
  if (msg.cmd === 'quit') break;
  const fn = commands[msg.cmd];
  // Commands run concurrently; answers carry the request's id.
  (async () => {
    try {
      if (!fn) throw new Error(`unknown command ${msg.cmd}`);
      send({ id: msg.id, ok: true, result: (await fn(msg.args || {})) ?? null });
    } catch (err) {
      send({ id: msg.id, ok: false, error: String(err && err.stack ? err.stack : err) });
    }
  })();
}
await browser.close();
process.exit(0);
