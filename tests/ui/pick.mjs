// A picker on a phone (390 × 844) signs in to a node's screens, builds a wave, picks it by typing bins and
// SKUs into the focused field and pressing Enter (what a barcode scanner does), packs and ships the first
// order, and looks up a SKU; axe-core checks every screen for serious or critical accessibility violations.
// Run by tests/tests/ui_browser.rs with OMS_URL, OMS_USER, OMS_PIN and OMS_SHOTS (a screenshot folder);
// prints one JSON line with what it measured, and exits non-zero on the first thing that is wrong.
import { fail, launch, look as lookAt } from "./common.mjs";

const { OMS_URL, OMS_USER, OMS_PIN, OMS_SHOTS } = process.env;
// Bounded: a wave of a few lines takes two scans a line (the screens bench picks a bigger wave).
const STEPS_MAX = Number(process.env.OMS_STEPS_MAX || 40);

const context = await launch({ width: 390, height: 844 }, true);
// scan_to_ready_ms: wall clock in this process, from the Enter to the next screen focused (includes
// Playwright's round trips and polling). scan_to_ready_in_page_ms: the browser's own clock, from the start of
// the navigation the Enter began (the form's post, the redirect, the get) until the scan field of the new
// screen took the focus. reload_to_ready_in_page_ms: the same for a plain reload of the pick screen (the
// baseline: one GET of the same screen).
const out = {
  screens: {}, scan_to_ready_ms: [], scan_to_ready_in_page_ms: [], reload_to_ready_in_page_ms: [], axe_violations: 0,
};
try {
  const page = await context.newPage();
  page.setDefaultTimeout(15_000);
  // Measurement only: in every new document, note when the scan field first takes the focus (ms since the
  // navigation began, the document's time origin).
  await page.addInitScript(() => {
    document.addEventListener("focusin", (e) => {
      if (e.target && e.target.id === "scan" && window.__scanReady === undefined) window.__scanReady = performance.now();
    }, true);
  });
  const inPage = () => page.evaluate(() => window.__scanReady);

  const look = (name) => lookAt(page, name, out, OMS_SHOTS);

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
    const ready = await inPage();
    if (typeof ready === "number") {
      out.scan_to_ready_in_page_ms.push(ready);
      // The baseline, on the same screen: a plain reload (one GET), every fourth scan.
      if (scans % 4 === 0) {
        await page.reload();
        await page.waitForFunction(() => window.__scanReady !== undefined);
        out.reload_to_ready_in_page_ms.push(await inPage());
      }
    }
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
