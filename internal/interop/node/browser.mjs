// Drives headless Chromium (Debian's, through playwright-core) for the
// wsproxy tests. It reads one JSON command per line on stdin and answers
// each with one JSON line:
//   {"op":"checks","page":URL,"opts":{...}}  -> {"results":[...]} (checks.mjs in the page)
//   {"op":"run","page":URL,"timeout":ms}     -> {"result":window.testResult} once the page sets it
//   {"op":"screenshot","page":URL,"path":P,"waitFor":JS,"chat":[{"input":SEL,"text":T}]}
//        -> {"ok":true}; each chat entry opens one more tab, waits for waitFor,
//           types T into SEL and presses Enter; the first tab is photographed.
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
      const tabs = [page];
      for (let i = 1; i < (cmd.chat || []).length; i++) {
        const p = await context.newPage();
        await p.goto(cmd.page);
        tabs.push(p);
      }
      try {
        for (const [i, step] of (cmd.chat || []).entries()) {
          if (cmd.waitFor) await tabs[i].waitForFunction(cmd.waitFor, null, { timeout: 10000 });
          await tabs[i].fill(step.input, step.text);
          await tabs[i].press(step.input, 'Enter');
        }
        await page.waitForTimeout(cmd.settle || 0);
        await page.screenshot({ path: cmd.path });
      } finally {
        for (const p of tabs.slice(1)) await p.close();
      }
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
