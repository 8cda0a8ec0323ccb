// What the browser scripts share: failing loudly, launching Debian's Chromium with a fresh profile, and
// looking at a screen (bytes on first load, axe-core's serious or critical violations, a screenshot).
import { chromium } from "playwright-core";
import { readFileSync, mkdirSync, mkdtempSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";

const require = createRequire(import.meta.url);
const AXE = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");

/** Prints why and exits non-zero. */
export const fail = (msg) => {
  console.error(`FAIL: ${msg}`);
  process.exit(1);
};

/** Chromium with a fresh profile (Playwright passes it as --user-data-dir) and the closed-network flags. */
export const launch = (viewport, mobile) =>
  chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), "oms-chromium-")), {
    executablePath: process.env.OMS_CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    timeout: 60_000,
    viewport,
    isMobile: mobile,
    hasTouch: mobile,
  });

/** Records into `out` what screen `name` on `page` weighs and what axe finds; saves a screenshot in `shots`. */
export const look = async (page, name, out, shots) => {
  mkdirSync(shots, { recursive: true });
  const bytes = await page.evaluate(() =>
    performance.getEntries().reduce((sum, e) => sum + (e.transferSize || e.encodedBodySize || 0), 0));
  await page.addScriptTag({ content: AXE });
  const result = await page.evaluate(async () => await window.axe.run(document));
  const bad = result.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  for (const v of bad) console.error(`axe on ${name}: ${v.id} (${v.impact}): ${v.help} — ${v.nodes.map((n) => n.target).join(", ")}`);
  out.axe_violations += bad.length;
  out.screens[name] = { first_load_bytes: bytes, axe_serious_or_critical: bad.length };
  await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
};
