// A picker on a phone (390 × 844) signs in to a node's screens, builds a wave, picks it by typing bins and
// SKUs into the focused field and pressing Enter (what a barcode scanner does), packs and ships the first
// order, and looks up a SKU; axe-core checks every screen for serious or critical accessibility violations.
// Run by tests/tests/ui_browser.rs with OMS_URL, OMS_USER, OMS_PIN and OMS_SHOTS (a screenshot folder);
// prints one JSON line with what it measured, and exits non-zero on the first thing that is wrong.
import { chromium } from "playwright-core";
import { readFileSync, mkdirSync, mkdtempSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";

const require = createRequire(import.meta.url);
const AXE = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");
const { OMS_URL, OMS_USER, OMS_PIN, OMS_SHOTS } = process.env;
const STEPS_MAX = 40; // bounded: a wave of a few lines takes two scans a line
mkdirSync(OMS_SHOTS, { recursive: true });

const fail = (msg) => {
  console.error(`FAIL: ${msg}`);
  process.exit(1);
};

// A fresh profile each run (Playwright passes it as --user-data-dir).
const context = await chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), "oms-chromium-")), {
  executablePath: process.env.OMS_CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
  timeout: 60_000,
  viewport: { width: 390, height: 844 },
  isMobile: true,
  hasTouch: true,
});
const out = { screens: {}, scan_to_ready_ms: [], axe_violations: 0 };
try {
  const page = await context.newPage();
  page.setDefaultTimeout(15_000);

  // What the screen weighs on first load, and whether axe finds anything serious; then a screenshot.
  const look = async (name) => {
    const bytes = await page.evaluate(() =>
      performance.getEntries().reduce((sum, e) => sum + (e.transferSize || e.encodedBodySize || 0), 0));
    await page.addScriptTag({ content: AXE });
    const result = await page.evaluate(async () => await window.axe.run(document));
    const bad = result.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
    for (const v of bad) console.error(`axe on ${name}: ${v.id} (${v.impact}): ${v.help} — ${v.nodes.map((n) => n.target).join(", ")}`);
    out.axe_violations += bad.length;
    out.screens[name] = { first_load_bytes: bytes, axe_serious_or_critical: bad.length };
    await page.screenshot({ path: join(OMS_SHOTS, `${name}.png`), fullPage: true });
  };

  await page.goto(`${OMS_URL}/ui`);
  if (!page.url().includes("/ui/sign-in")) fail(`a stranger was not sent to sign in: ${page.url()}`);
  await look("sign-in");
  await page.getByLabel("Name").fill(OMS_USER);
  await page.getByLabel("Password or PIN").fill(OMS_PIN);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: /Today at/ }).waitFor();
  await look("today");

  await page.getByRole("button", { name: "Build a pick wave" }).click();
  await page.getByRole("heading", { name: /Pick wave/ }).waitFor();
  await look("pick");
  let scans = 0;
  for (let step = 0; step < STEPS_MAX; step++) {
    if (await page.getByRole("heading", { name: /is picked/ }).count()) break;
    // The scan field has the focus: a scanner types into it and presses Enter.
    const focused = await page.evaluate(() => document.activeElement && document.activeElement.id);
    if (focused !== "scan") fail(`the scan field does not have the focus on the pick screen (focus: ${focused})`);
    const binStep = await page.getByLabel(/Scan the bin label/).count();
    const code = binStep
      ? (await page.locator("p.big").innerText()).trim()
      : await page.locator('input[name="sku"]').first().inputValue();
    await page.keyboard.type(code);
    const started = Date.now(); // from the scanner's Enter

    const loaded = page.waitForEvent("load"); // the next document: post, redirect, get
    await page.keyboard.press("Enter");
    await loaded;
    await page.waitForFunction(() => {
      const a = document.activeElement;
      return (a && a.id === "scan") || /is picked/.test(document.body.innerText);
    });
    out.scan_to_ready_ms.push(Date.now() - started);
    scans++;
  }
  if (!(await page.getByRole("heading", { name: /is picked/ }).count())) fail(`the wave was not picked in ${STEPS_MAX} steps`);
  await look("wave-picked");
  out.scans = scans;

  // Pack and ship the first order of the wave.
  const first = page.locator("table a").first();
  out.order = (await first.innerText()).trim();
  await first.click();
  await page.getByLabel("Parcels").fill("2");
  await page.getByRole("button", { name: "Packed" }).click();
  await page.getByRole("button", { name: "Handed to the carrier" }).waitFor();
  await look("ship");
  await page.getByLabel("Carrier").fill("DHL");
  await page.getByLabel(/Tracking number/).fill("JD0001");
  await page.getByRole("button", { name: "Handed to the carrier" }).click();
  await page.getByText("Shipped with DHL").first().waitFor();
  await look("order-shipped");

  // Stock lookup by scanning a SKU.
  await page.getByRole("link", { name: "Stock" }).click();
  await page.getByLabel(/SKU/).fill("A");
  const loaded = page.waitForEvent("load");
  await page.keyboard.press("Enter");
  await loaded;
  await page.getByText("On hand").first().waitFor();
  await look("stock");
} catch (e) {
  fail(e && e.stack ? e.stack : String(e));
} finally {
  await context.close();
}
console.log(JSON.stringify(out));
if (out.axe_violations > 0) fail(`${out.axe_violations} serious or critical accessibility violations`);
