// Drives headless Chromium (Debian's `chromium`) through guestgate's browser sign-in.
//
//   node browser.js GATEWAY_URL USER
//
// Opens GATEWAY_URL/display/ENG/Home, signs in at the test IdP as USER, then opens a page
// the guest may not see. Prints one JSON line of what it found; the Rust test judges it.
import { chromium } from 'playwright-core';

const [gateway, user] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';

const browser = await chromium.launch({
  executablePath,
  headless: true,
  // Chromium's own background connections are refused in sandboxes like CI's.
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const out = {};
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(20000);
  await page.goto(`${gateway}/display/ENG/Home`);
  out.login_url = page.url();
  await page.fill('#login', user);
  await Promise.all([
    page.waitForURL((u) => u.toString().startsWith(`${gateway}/display/`)),
    page.click('#submit'),
  ]);
  out.signed_in_url = page.url();
  out.banner = await page.locator('.guestgate-guest-banner').first().textContent({ timeout: 5000 })
    .catch(() => null);
  out.title = await page.title();
  const session = (await page.context().cookies()).find((c) => c.name === 'guestgate_session');
  out.session_cookie = session ? { httpOnly: session.httpOnly, sameSite: session.sameSite } : null;
  out.script_sees_session = await page.evaluate(() => document.cookie.includes('guestgate_session'));
  const blocked = await page.goto(`${gateway}/display/HR/Home`);
  out.blocked_status = blocked.status();
  out.blocked_text = await page.locator('body').textContent();
} catch (e) {
  out.error = String(e?.stack || e);
} finally {
  await browser.close();
}
process.stdout.write(`${JSON.stringify(out)}\n`);
