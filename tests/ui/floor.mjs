// Staff on a phone (390 × 844) at a site that a hub sent a purchase order (with ASN-1) and an approved return:
// from today's work to receiving, where an ASN line is received by typing the units and then the SKU into the
// focused scan field and pressing Enter (what a barcode scanner does); to returns, where one unit is restocked
// the same way; and to dispatch. axe-core checks every screen for serious or critical violations.
// Run by tests/tests/ui_browser.rs with OMS_URL, OMS_USER, OMS_PIN and OMS_SHOTS (a screenshot folder);
// prints one JSON line with what it measured, and exits non-zero on the first thing that is wrong.
import { fail, launch, look as lookAt } from "./common.mjs";

const { OMS_URL, OMS_USER, OMS_PIN, OMS_SHOTS } = process.env;

const context = await launch({ width: 390, height: 844 }, true);
const out = { screens: {}, axe_violations: 0, received_units: 0, returned_units: 0 };
try {
  const page = await context.newPage();
  page.setDefaultTimeout(15_000);
  const look = (name) => lookAt(page, name, out, OMS_SHOTS);
  const focused = () => page.evaluate(() => document.activeElement && document.activeElement.id);
  // Types `code` into the focused field and presses Enter; waits for the next document (post, redirect, get).
  const scan = async (code) => {
    await page.keyboard.type(code);
    const loaded = page.waitForEvent("load");
    await page.keyboard.press("Enter");
    await loaded;
  };

  await page.goto(`${OMS_URL}/ui/sign-in`);
  await page.getByLabel("Name").fill(OMS_USER);
  await page.getByLabel("Password or PIN").fill(OMS_PIN);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: /Today at/ }).waitFor();

  // Receiving: from today's tile, the ASN, 4 units scanned.
  await page.getByRole("link", { name: /Purchase orders to receive/ }).click();
  await page.getByRole("heading", { name: "Receiving", exact: true }).waitFor();
  await look("node-inbound");
  await page.getByRole("link", { name: /Receive ASN ASN-1/ }).click();
  await page.getByRole("heading", { name: "Receive ASN ASN-1" }).waitFor();
  if ((await focused()) !== "scan") fail(`the scan field does not have the focus on receiving (focus: ${await focused()})`);
  await look("node-inbound-asn");
  await page.getByLabel(/^Units/).fill("4");
  await page.getByLabel(/Scan the item/).focus();
  await scan("SKU-A");
  await page.getByText("Received 4 × SKU-A (line 1)").waitFor();
  if ((await focused()) !== "scan") fail("the scan field lost the focus after a receipt");
  out.received_units = 4;

  // Returns: one unit restocked.
  await page.getByRole("link", { name: "Returns", exact: true }).click();
  await page.getByRole("heading", { name: "Returns", exact: true }).waitFor();
  await look("node-returns");
  await page.getByRole("link", { name: /Receive return/ }).first().click();
  await page.getByRole("heading", { name: /Receive return/ }).waitFor();
  await page.getByLabel(/Restock/).check();
  await page.getByLabel(/^Units/).fill("1");
  await page.getByLabel(/Scan the item/).focus();
  await scan("SKU-A");
  await page.getByText(/Received 1 × SKU-A against return .*, restocked/).waitFor();
  await look("node-return-received");
  out.returned_units = 1;

  // Dispatch.
  await page.getByRole("link", { name: "Dispatch", exact: true }).click();
  await page.getByRole("heading", { name: "Dispatch", exact: true }).waitFor();
  await look("node-dispatch");
} catch (e) {
  fail(e && e.stack ? e.stack : String(e));
} finally {
  await context.close();
}
console.log(JSON.stringify(out));
if (out.axe_violations > 0) fail(`${out.axe_violations} serious or critical accessibility violations`);
