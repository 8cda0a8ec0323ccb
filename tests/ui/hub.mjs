// The hub's screens in Chromium: a service agent (desktop) finds an order by the customer's e-mail address
// (OMS_EMAIL; by its number without it), looks at how it was routed, cancels one unit and then the order, each
// with a reason; a planner looks at the network, the stock table and the reports; the customer opens the tracking link on a phone
// (390 × 844), and a guessed link finds nothing. axe-core checks every screen. Run by
// tests/tests/ui_browser.rs with OMS_URL, OMS_ORDER, OMS_TRACK (the tracking path), OMS_SHOTS; prints one JSON
// line and exits non-zero on the first thing that is wrong. With OMS_RETURN_TRACK (the tracking path of a
// shipped order) instead: the customer on a phone asks for a return of one unit on the tracking page and
// sees it requested.
import { fail, launch, look as lookAt } from "./common.mjs";

const { OMS_URL, OMS_ORDER, OMS_EMAIL, OMS_TRACK, OMS_RETURN_TRACK, OMS_SHOTS } = process.env;
const out = { screens: {}, axe_violations: 0 };
const look = (page, name) => lookAt(page, name, out, OMS_SHOTS);
const signIn = async (page, name) => {
  await page.goto(`${OMS_URL}/ui`);
  await page.getByLabel("Name").fill(name);
  await page.getByLabel("Password or PIN").fill("a long password");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Network" }).or(page.getByRole("heading", { name: /Not allowed|Forbidden/ })).first().waitFor();
};

/** The customer returns one unit from the tracking page of a shipped order, on a phone. */
const customerReturns = async () => {
  const phone = await launch({ width: 390, height: 844 }, true);
  try {
    const page = await phone.newPage();
    page.setDefaultTimeout(15_000);
    await page.goto(`${OMS_URL}${OMS_RETURN_TRACK}`);
    await page.getByRole("heading", { name: "Return items" }).waitFor();
    await look(page, "hub-tracking");
    await page.getByLabel(/How many/).first().fill("1");
    await page.getByLabel("Why").first().selectOption("damaged");
    await page.getByRole("button", { name: "Request the return" }).click();
    await page.getByText("Requested: we will confirm it shortly").waitFor();
    await look(page, "hub-tracking-return");
  } catch (e) {
    fail(e && e.stack ? e.stack : String(e));
  } finally {
    await phone.close();
  }
};

if (OMS_RETURN_TRACK) {
  await customerReturns();
  console.log(JSON.stringify(out));
  if (out.axe_violations > 0) fail(`${out.axe_violations} serious or critical accessibility violations`);
  process.exit(0);
}

const desk = await launch({ width: 1280, height: 800 }, false);
try {
  const page = await desk.newPage();
  page.setDefaultTimeout(15_000);
  // The planner: network and stock.
  await signIn(page, "per");
  await look(page, "hub-network");
  await page.getByRole("link", { name: "Stock" }).click();
  await page.getByRole("heading", { name: "Network stock" }).waitFor();
  await look(page, "hub-stock");
  await page.getByRole("link", { name: "Reports" }).click();
  await page.getByRole("heading", { name: "Orders per day" }).waitFor();
  await look(page, "hub-reports");
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByRole("heading", { name: "Sign in" }).waitFor();
  // The agent: find the order, cancel it with a reason.
  await page.getByLabel("Name").fill("sam");
  await page.getByLabel("Password or PIN").fill("a long password");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("link", { name: "Orders" }).click();
  // Found by what the caller says: the e-mail address (in another case), the one match opens.
  await page.getByLabel(/Order number/).fill(OMS_EMAIL || OMS_ORDER);
  await page.keyboard.press("Enter");
  await page.getByRole("heading", { name: `Order ${OMS_ORDER}` }).waitFor();
  await look(page, "hub-order");
  // How it was routed, drawn.
  await page.getByRole("link", { name: "How it was routed" }).click();
  await page.getByRole("heading", { name: `Routing of order ${OMS_ORDER}` }).waitFor();
  await look(page, "hub-routing");
  await page.getByRole("link", { name: "Back to the order" }).click();
  await page.getByRole("heading", { name: `Order ${OMS_ORDER}` }).waitFor();
  // One of the two units, with a reason: the order goes on with one.
  const lines = page.locator('form[action$="/cancel-lines"]');
  await lines.getByLabel(/Units to cancel/).first().fill("1");
  await lines.getByLabel(/Reason/).fill("customer wants one");
  await lines.getByRole("button", { name: "Cancel these units" }).click();
  await page.getByText("Units to cancel (1 can be)").waitFor();
  await look(page, "hub-order-line-cancelled");
  // The whole-order cancel (the page also offers to cancel only the units waiting for stock).
  await page.locator('form[action$="/cancel"]').getByLabel(/Reason/).fill("customer called to cancel");
  await page.getByRole("button", { name: "Cancel the order" }).click();
  await page.getByText("Cancelled because: customer called to cancel").waitFor();
  await look(page, "hub-order-cancelled");
} catch (e) {
  fail(e && e.stack ? e.stack : String(e));
} finally {
  await desk.close();
}

const phone = await launch({ width: 390, height: 844 }, true);
try {
  const page = await phone.newPage();
  page.setDefaultTimeout(15_000);
  await page.goto(`${OMS_URL}${OMS_TRACK}`);
  await page.getByRole("heading", { name: "Cancelled" }).waitFor();
  await look(page, "customer-tracking");
  const text = await page.locator("body").innerText();
  if (text.includes(OMS_ORDER) || text.includes("Secret Street")) fail("the tracking page shows internal data");
  const guessed = await page.goto(`${OMS_URL}/t/${"0".repeat(64)}`);
  if (guessed.status() !== 404) fail(`a guessed tracking link answered ${guessed.status()}`);
  await page.getByRole("heading", { name: /can't find this order/ }).waitFor();
  // Without the link: the order number and the e-mail address find it.
  if (OMS_EMAIL) {
    await page.goto(`${OMS_URL}/t`);
    await page.getByRole("heading", { name: "Find your order" }).waitFor();
    await look(page, "customer-find");
    await page.getByLabel(/Order number/).fill(OMS_ORDER);
    await page.getByLabel(/E-mail address/).fill(OMS_EMAIL);
    await page.getByRole("button", { name: "Show my order" }).click();
    await page.getByRole("heading", { name: "Cancelled" }).waitFor();
  }
} catch (e) {
  fail(e && e.stack ? e.stack : String(e));
} finally {
  await phone.close();
}
console.log(JSON.stringify(out));
if (out.axe_violations > 0) fail(`${out.axe_violations} serious or critical accessibility violations`);
