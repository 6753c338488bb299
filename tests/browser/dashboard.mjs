// Loads weir's admin dashboard in Debian's Chromium and waits for a plugin's failure to
// show; run by tests/all/dashboard.rs as
//
//   node dashboard.mjs http://ADMIN/ PLUGIN KIND [HEALTHY,...]
//
// It fails on any console error or uncaught page error; when, before the deadline, the row
// of plugin PLUGIN has not been marked failing with failures of KIND, or the recent errors
// do not list a PluginFailed; and when a HEALTHY plugin's row is missing or marked. With
// WEIR_DASHBOARD_SCREENSHOT=PATH it also writes a full-page screenshot there, after
// WEIR_DASHBOARD_POLLS polls of the page (default 2).
// Exit status: 0 when the dashboard showed the failure, 1 otherwise, with the reason on
// stderr.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [url, plugin, kind, healthy = ''] = process.argv.slice(2);
if (!url || !plugin || !kind) {
  console.error('usage: node dashboard.mjs URL PLUGIN KIND [HEALTHY,...]');
  process.exit(2);
}
const deadline = Number(process.env.WEIR_DASHBOARD_DEADLINE_MS || 20000);
const screenshot = process.env.WEIR_DASHBOARD_SCREENSHOT;

// A fresh profile, and Chromium's own background traffic (updates, sync, QUIC probes) off:
// the machine reaches nothing beyond the registries, and a refused connection must not
// slow or fail the page.
const profile = mkdtempSync(join(tmpdir(), 'weir-chromium-'));
const problems = [];
let context;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    viewport: { width: 1360, height: 900 },
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  const page = context.pages()[0] || (await context.newPage());
  page.on('console', message => {
    if (message.type() === 'error') {
      const at = message.location();
      problems.push(`console error: ${message.text()}${at.url ? ` (${at.url})` : ''}`);
    }
  });
  page.on('pageerror', error => problems.push(`page error: ${error.stack || error}`));

  const response = await page.goto(url, { timeout: deadline });
  if (!response || !response.ok()) {
    throw new Error(`GET ${url} answered ${response && response.status()}`);
  }
  // The plugin's row, marked failing, naming the kind of failure: the poll is Playwright's.
  const row = `#plugins tr.failing[data-plugin="${plugin}"]`;
  await page.waitForFunction(
    ([selector, kind]) => {
      const row = document.querySelector(selector);
      return !!row && row.querySelector('.failures-cell').textContent.includes(kind);
    },
    [row, kind],
    { timeout: deadline, polling: 100 },
  );
  // Two polls at least, so that the charts and rates have a point to draw (more for a
  // screenshot worth looking at: WEIR_DASHBOARD_POLLS).
  const polls = Number(process.env.WEIR_DASHBOARD_POLLS || 2);
  await page.waitForFunction(n => Number(document.body.dataset.polls) >= n, polls, {
    timeout: deadline + polls * 2000,
    polling: 100,
  });
  await page.waitForSelector('#errors li[data-kind="PluginFailed"]', { timeout: deadline });
  for (const name of healthy.split(',').filter(n => n)) {
    const marked = await page.$eval(`#plugins tr[data-plugin="${name}"]`, r => r.classList.contains('failing'));
    if (marked) problems.push(`plugin ${name} is marked failing`);
  }
  const text = await page.locator(row).innerText();
  console.log(`plugin row: ${text.replace(/\s+/g, ' ')}`);
  if (screenshot) {
    await page.screenshot({ path: screenshot, fullPage: true });
    console.log(`screenshot: ${screenshot}`);
  }
} catch (error) {
  problems.push(String(error.stack || error));
  // What the page showed instead.
  const shown = await context?.pages()[0]
    ?.evaluate(() => ['#banner', '#plugins', '#errors']
      .map(s => `${s}: ${document.querySelector(s)?.innerText.replace(/\s+/g, ' ').slice(0, 2000)}`)
      .join('\n'))
    .catch(() => null);
  if (shown) problems.push(`the page showed:\n${shown}`);
} finally {
  if (context) await context.close();
  rmSync(profile, { recursive: true, force: true });
}

if (problems.length > 0) {
  console.error(problems.join('\n'));
  process.exit(1);
}
