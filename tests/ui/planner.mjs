// A planner in Chromium (desktop) watches the network stock table while a site receives stock: signs in to
// the hub, opens the stock screen filtered to OMS_SKU at OMS_SITE, and reloads it (every 250 ms, at most
// 30 s) until the site's on-hand figure reads OMS_EXPECT, after the site's receipt has synced. Prints one
// JSON line (the figure first seen, the figure at the end, how long it took) and exits non-zero on the first
// thing that is wrong. Run by tests/tests/ui_browser.rs with OMS_URL (the hub), OMS_SKU, OMS_SITE,
// OMS_EXPECT and OMS_SHOTS.
import { fail, launch, look as lookAt } from "./common.mjs";

const { OMS_URL, OMS_SKU, OMS_SITE, OMS_EXPECT, OMS_SHOTS } = process.env;
const WAIT_MS = 30_000;
const out = { screens: {}, axe_violations: 0 };
const desk = await launch({ width: 1280, height: 800 }, false);
try {
  const page = await desk.newPage();
  page.setDefaultTimeout(15_000);
  await page.goto(`${OMS_URL}/ui`);
  await page.getByLabel("Name").fill("per");
  await page.getByLabel("Password or PIN").fill("a long password");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Network" }).waitFor();
  await page.goto(`${OMS_URL}/ui/stock?sku=${encodeURIComponent(OMS_SKU)}&site=${encodeURIComponent(OMS_SITE)}`);
  await page.getByRole("heading", { name: "Network stock" }).waitFor();
  // The row's "On hand" cell: the third of the row (SKU, site, on hand, …).
  const onHand = async () => {
    const cell = page.locator("tbody tr").filter({ hasText: OMS_SITE }).first().locator("td").nth(2);
    return (await cell.count()) ? Number((await cell.innerText()).trim()) : null;
  };
  out.first_seen = await onHand();
  const started = Date.now();
  for (let i = 0; i < WAIT_MS / 250; i++) {
    out.last_seen = await onHand();
    if (out.last_seen === Number(OMS_EXPECT)) break;
    await page.waitForTimeout(250);
    await page.reload();
  }
  out.waited_ms = Date.now() - started;
  if (out.last_seen !== Number(OMS_EXPECT)) fail(`the stock table still shows ${out.last_seen}, not ${OMS_EXPECT}`);
  await lookAt(page, "hub-stock-after-receipt", out, OMS_SHOTS);
} catch (e) {
  fail(e && e.stack ? e.stack : String(e));
} finally {
  await desk.close();
}
console.log(JSON.stringify(out));
if (out.axe_violations > 0) fail(`${out.axe_violations} serious or critical accessibility violations`);
