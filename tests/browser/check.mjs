// Loads one page through guestgate in headless Chromium (Debian's `chromium` package) as the
// holder of TOKEN (sent as the `guestgate_token` cookie, one of guestgate's token sources),
// waits for it to render, and writes the rendered DOM (and optionally a screenshot).
// The assertions are made by the caller, tests/mediawiki.rs, on the DOM file.
//
//   node check.mjs URL TOKEN DOM_OUT [SCREENSHOT_OUT]
//
// Prints one JSON line: {"status": 200, "url": "<final URL>"}.
import { writeFileSync } from 'node:fs';
import { chromium } from 'playwright-core';

const [url, token, domOut, screenshotOut] = process.argv.slice(2);
if (!url || !token || !domOut) {
  console.error('usage: node check.mjs URL TOKEN DOM_OUT [SCREENSHOT_OUT]');
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  await context.addCookies([
    { name: 'guestgate_token', value: token, url: new URL(url).origin, httpOnly: true },
  ]);
  const page = await context.newPage();
  const response = await page.goto(url, { waitUntil: 'load', timeout: 30000 });
  // The skin's scripts finish after `load`; give them a moment so the DOM is the final one.
  await page.waitForLoadState('networkidle', { timeout: 10000 }).catch(() => {});
  writeFileSync(domOut, await page.content());
  if (screenshotOut) {
    await page.screenshot({ path: screenshotOut });
  }
  console.log(JSON.stringify({ status: response ? response.status() : 0, url: page.url() }));
} finally {
  await browser.close();
}
