// Drives headless Chromium (Debian's, through playwright-core) for the
// wsproxy tests. It reads one JSON command per line on stdin and answers
// each with one JSON line:
//   {"op":"checks","page":URL,"opts":{...}}  -> {"results":[...]} (checks.mjs in the page)
//   {"op":"run","page":URL,"timeout":ms}     -> {"result":window.testResult} once the page sets it
//   {"op":"screenshot","page":URL,"path":P}  -> {"ok":true}
// Errors are answered {"error":"..."}. It exits when stdin closes.
import { createInterface } from 'node:readline';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const profile = mkdtempSync(join(tmpdir(), 'wsproxy-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  ignoreHTTPSErrors: true,
  viewport: { width: 1000, height: 700 },
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--ignore-certificate-errors',
  ],
});
const reply = (v) => process.stdout.write(JSON.stringify(v) + '\n');
reply({ ready: true });

async function handle(cmd) {
  const page = await context.newPage();
  try {
    await page.goto(cmd.page);
    if (cmd.op === 'checks') {
      await page.waitForFunction(() => typeof window.runChecks === 'function', null, { timeout: 10000 });
      return { results: await page.evaluate((o) => window.runChecks(o), cmd.opts) };
    }
    if (cmd.op === 'run') {
      await page.waitForFunction(() => window.testResult !== undefined, null, { timeout: cmd.timeout || 30000 });
      return { result: await page.evaluate(() => window.testResult) };
    }
    if (cmd.op === 'screenshot') {
      if (cmd.waitFor) await page.waitForFunction(cmd.waitFor, null, { timeout: 10000 });
      await page.screenshot({ path: cmd.path });
      return { ok: true };
    }
    return { error: `unknown op ${cmd.op}` };
  } finally {
    await page.close();
  }
}

const rl = createInterface({ input: process.stdin });
for await (const line of rl) {
  if (!line.trim()) continue;
  try {
    reply(await handle(JSON.parse(line)));
  } catch (e) {
    reply({ error: String(e && e.stack || e) });
  }
}
await context.close();
rmSync(profile, { recursive: true, force: true });
