// Opens the vidkv demo in headless chromium (WebGPU on SwiftShader), waits for the page to
// finish, and checks what the library computed in the page (wasm32) against what the native
// library computes with the same function (expected.json, which the page never reads): bits
// and bytes identical, attention error within 1e-3 relative; then checks that a chromium
// without WebGPU gets the page's message, not a blank page, and that no console error came.
// Usage: node web/test.mjs URL SCREENSHOT.png. Exits 1 on any mismatch or console error.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [url, screenshot] = process.argv.slice(2);
if (!url || !screenshot) {
  console.error('usage: node web/test.mjs URL SCREENSHOT.png');
  process.exit(2);
}
const TOLERANCE = 1e-3;

// Opens the demo in `page` and waits until it has finished, failed or found no WebGPU;
// meanwhile prints, every minute, the page's status line and the requests still open, so a
// stall says where it waits.
async function finalStatus(page, timeout) {
  const open = new Map();
  const started = Date.now();
  const seconds = () => ((Date.now() - started) / 1000).toFixed(1);
  page.on('request', (r) => open.set(r, seconds()));
  page.on('requestfinished', (r) => open.delete(r));
  page.on('requestfailed', (r) => {
    open.delete(r);
    console.log(`${seconds()} s: request failed: ${r.url()} (${r.failure()?.errorText})`);
  });
  const heartbeat = setInterval(async () => {
    const status = await page.$eval('#status', (el) => `${el.dataset.state}: ${el.textContent}`)
      .catch((e) => `no status (${e.message.split('\n')[0]})`);
    const waiting = [...open].map(([r, at]) => `${r.url()} since ${at} s`).join(', ') || 'none';
    console.log(`${seconds()} s: page ${status}; open requests: ${waiting}`);
  }, 60_000);
  try {
    await page.goto(url);
    console.log(`${seconds()} s: loaded`);
    await page.waitForFunction(
      () => ['done', 'error', 'no-webgpu'].includes(document.getElementById('status').dataset.state),
      null,
      { timeout },
    );
  } finally {
    clearInterval(heartbeat);
  }
  return page.$eval('#status', (el) => ({ state: el.dataset.state, text: el.textContent }));
}
const failures = [];
const consoleErrors = [];

const profile = mkdtempSync(join(tmpdir(), 'vidkv-chromium-'));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  headless: true,
  args: [
    '--enable-unsafe-webgpu',
    '--no-sandbox',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--no-first-run',
    '--disable-quic',
  ],
  viewport: { width: 1150, height: 900 },
});
try {
  const page = browser.pages()[0] ?? (await browser.newPage());
  page.on('console', (message) => {
    if (message.type() === 'error') consoleErrors.push(message.text());
  });
  page.on('pageerror', (error) => consoleErrors.push(`page error: ${error.message}`));
  // Seconds as a rule. The heartbeat once showed two shader fetches unanswered for 300 s
  // (tiny_http's task pool starved a new connection behind idle keep-alive sockets; the
  // demo now serves each connection on a thread of its own, src/cli/serve.rs); the limit
  // stays generous, and the time is printed.
  const started = Date.now();
  const status = await finalStatus(page, 1_800_000);
  console.log(`page status after ${((Date.now() - started) / 1000).toFixed(1)} s: ${status.state}: ${status.text}`);
  if (status.state !== 'done') failures.push(`the page did not finish: ${status.text}`);

  const expected = await (await fetch(new URL('expected.json', url))).json();
  const shown = await page.evaluate(() => window.vidkvResults ?? null);
  const cells = await page.$$eval('#figures tbody tr', (rows) => rows.map((tr) => ({
    preset: tr.dataset.preset,
    bits: Number(tr.querySelector('.bits').textContent),
    error: Number(tr.querySelector('.error').textContent),
  })));
  if (shown) {
    console.log(`adapter: ${shown.adapter}`);
    console.log('preset        bits (page / native)    bytes (page / native)   attention error (page / native)   page ms');
    for (const want of expected.presets) {
      const got = shown.results.find((r) => r.preset === want.preset);
      const cell = cells.find((c) => c.preset === want.preset);
      if (!got || !cell) {
        failures.push(`${want.preset}: not shown on the page`);
        continue;
      }
      console.log(`${want.preset.padEnd(12)}  ${got.bits.toFixed(5)} / ${want.bits_per_element.toFixed(5)}     `
        + `${String(got.bytes).padStart(8)} / ${String(want.bytes).padEnd(8)}      `
        + `${got.attention_error.toFixed(7)} / ${want.attention_error.toFixed(7)}        `
        + `${got.ms.toFixed(1).padStart(8)}`);
      const relative = (a, b) => Math.abs(a - b) / Math.max(Math.abs(b), Number.MIN_VALUE);
      if (got.bits !== want.bits_per_element) failures.push(`${want.preset}: bits ${got.bits} vs ${want.bits_per_element}`);
      if (got.bytes !== want.bytes) failures.push(`${want.preset}: bytes ${got.bytes} vs ${want.bytes}`);
      if (relative(got.attention_error, want.attention_error) > TOLERANCE) {
        failures.push(`${want.preset}: attention error ${got.attention_error} vs ${want.attention_error}`);
      }
      if (Math.abs(cell.bits - got.bits) > 1e-4 || Math.abs(cell.error - got.attention_error) > 1e-6) {
        failures.push(`${want.preset}: the table shows ${JSON.stringify(cell)}, not the computed figures`);
      }
    }
    // The weight maps: every query head's weights over the keys sum to 1.
    for (const [preset, weights] of Object.entries(shown.weights ?? {})) {
      const heads = 9;
      const tokens = weights.length / heads;
      for (let h = 0; h < heads; h += 1) {
        const sum = weights.slice(h * tokens, (h + 1) * tokens).reduce((a, b) => a + b, 0);
        if (Math.abs(sum - 1) > 1e-4) failures.push(`${preset}: weights of head ${h} sum to ${sum}`);
      }
    }
    if (Object.keys(shown.weights ?? {}).length !== 2) failures.push('the page shows no weight maps');
  } else {
    failures.push('the page published no results (window.vidkvResults)');
  }
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(`screenshot: ${screenshot}`);
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
for (const error of consoleErrors) failures.push(`console error: ${error}`);

// Without --enable-unsafe-webgpu this chromium offers no adapter: the page must say so.
const plainProfile = mkdtempSync(join(tmpdir(), 'vidkv-chromium-'));
const plain = await chromium.launchPersistentContext(plainProfile, {
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--no-first-run', '--disable-quic'],
});
try {
  const page = plain.pages()[0] ?? (await plain.newPage());
  const status = await finalStatus(page, 120_000);
  console.log(`without WebGPU: ${status.state}: ${status.text}`);
  if (status.state !== 'no-webgpu') failures.push(`without WebGPU the page shows ${status.state}: ${status.text}`);
} finally {
  await plain.close();
  rmSync(plainProfile, { recursive: true, force: true });
}
if (failures.length) {
  console.error(`FAILED:\n  ${failures.join('\n  ')}`);
  process.exit(1);
}
console.log('web test passed: the library in the page matches the native library');
