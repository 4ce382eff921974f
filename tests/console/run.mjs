// Browser tests of the keyledger console in Debian's Chromium, driven by playwright-core.
// Run by .ci/console-check, which starts `keyledger serve`, seeds it and sets:
//   CONSOLE_URL            the server's base URL (http://127.0.0.1:PORT)
//   CONSOLE_ORG            the seeded organization's id
//   CONSOLE_TENANT_A/_B    its two tenants
//   CONSOLE_KEYS           the two demo key identifiers, comma-separated (enabled, then rotated to)
//   CONSOLE_TOKEN_AUDITOR, CONSOLE_TOKEN_AUDITOR_A, CONSOLE_TOKEN_ADMIN, CONSOLE_TOKEN_PLATFORM
//   CONSOLE_SECRET         the demo client secret (must appear on no page)
//   CONSOLE_SHOTS          where the screenshots go (docs/console)
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { mkdirSync } from "node:fs";
import { chromium } from "playwright-core";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set (run .ci/console-check)`);
  return v;
};
const BASE = env("CONSOLE_URL");
const ORG = env("CONSOLE_ORG");
const TENANT_A = env("CONSOLE_TENANT_A");
const TENANT_B = env("CONSOLE_TENANT_B");
const [KEY_1, KEY_2] = env("CONSOLE_KEYS").split(",");
const TOKENS = {
  auditor: env("CONSOLE_TOKEN_AUDITOR"),
  auditorA: env("CONSOLE_TOKEN_AUDITOR_A"),
  admin: env("CONSOLE_TOKEN_ADMIN"),
  platform: env("CONSOLE_TOKEN_PLATFORM"),
};
const SECRET = env("CONSOLE_SECRET");
const SHOTS = process.env.CONSOLE_SHOTS || "docs/console";
mkdirSync(SHOTS, { recursive: true });

let browser;
// Every page's HTML seen, checked for secrets at the end.
const seen = [];

before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-dev-shm-usage"],
  });
});
after(async () => {
  await browser?.close();
});

async function newPage() {
  const context = await browser.newContext({ viewport: { width: 1366, height: 900 }, acceptDownloads: true });
  const page = await context.newPage();
  page.on("response", async (r) => {
    const type = r.headers()["content-type"] || "";
    if (type.startsWith("text/html")) {
      try { seen.push({ url: r.url(), html: await r.text() }); } catch { /* redirects have no body */ }
    }
  });
  return { context, page };
}

async function signIn(page, token) {
  await page.goto(`${BASE}/console`);
  await page.getByLabel("Bearer token").fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.waitForURL(`${BASE}/console`);
  await assertSignedIn(page);
}

async function assertSignedIn(page) {
  assert.equal(await page.getByRole("button", { name: "Sign out" }).count(), 1, "signed in");
}

async function shot(page, name) {
  await page.screenshot({ path: `${SHOTS}/${name}.png`, fullPage: true });
}

test("sign in with a token, see the organizations in scope", async () => {
  const { context, page } = await newPage();
  await page.goto(`${BASE}/console`);
  await shot(page, "sign-in");
  await signIn(page, TOKENS.auditor);
  const link = page.getByRole("link", { name: "Contoso" });
  assert.equal(await link.count(), 1);
  const cookies = await context.cookies();
  const session = cookies.find((c) => c.name === "keyledger_console");
  assert.ok(session, "a session cookie");
  assert.equal(session.httpOnly, true);
  assert.equal(session.sameSite, "Strict");
  assert.equal(session.path, "/console");
  assert.ok(!session.value.includes(TOKENS.auditor), "no token in the cookie");
  await shot(page, "organizations");
  await context.close();
});

test("the organization page shows the active key and its history", async () => {
  const { context, page } = await newPage();
  await signIn(page, TOKENS.auditor);
  await page.getByRole("link", { name: "Contoso" }).click();
  await page.waitForURL(`${BASE}/console/organizations/${ORG}`);
  assert.equal(await page.getByRole("heading", { level: 1 }).innerText(), "Contoso");
  assert.match(await page.locator("#mode").innerText(), /Customer-managed key/);
  // The key is pinned to its version at "Test and save": KEY_2/<version>.
  const active = await page.locator("#active-key").innerText();
  assert.ok(active.startsWith(`${KEY_2}/`), active);
  const history = page.locator("#key-history tbody tr");
  assert.equal(await history.count(), 2);
  assert.match(await history.nth(0).innerText(), new RegExp(KEY_1.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")));
  assert.match(await history.nth(1).innerText(), /active/);
  assert.match(await page.locator("#health").innerText(), /since/);
  assert.ok((await page.locator("#data-keys tbody tr").count()) >= 1, "data keys listed");
  const verification = await page.locator("#verification").innerText();
  assert.match(verification, /Verifier key/);
  assert.match(verification, /tree size \d+, signed \d{4}-\d\d-\d\d/, verification);
  await shot(page, "organization");
  await context.close();
});

test("the tenant audit shows the rotation, filters by action, pages and downloads CSV", async () => {
  const { context, page } = await newPage();
  await signIn(page, TOKENS.auditor);
  await page.goto(`${BASE}/console/tenants/${TENANT_A}/audit`);
  const actions = async () => page.locator("#audit td.action").allInnerTexts();
  assert.ok((await actions()).includes("CustomerManagedKeyRotated"), "the rotation is listed");
  await shot(page, "tenant-audit");

  // Filter by action through the form.
  await page.getByLabel("Action").fill("CustomerManagedKeyRotated");
  await page.getByRole("button", { name: "Apply" }).click();
  await page.waitForURL(/action=CustomerManagedKeyRotated/);
  const filtered = await actions();
  assert.ok(filtered.length >= 1);
  assert.ok(filtered.every((a) => a === "CustomerManagedKeyRotated"), filtered.join());
  await shot(page, "tenant-audit-filtered");

  // Pages of one row: the next page shows the next row.
  await page.goto(`${BASE}/console/tenants/${TENANT_A}/audit?limit=1`);
  const first = await page.locator("#audit tbody th").allInnerTexts();
  assert.equal(first.length, 1);
  await page.getByRole("link", { name: "Next page" }).click();
  await page.waitForURL(/after=/);
  const second = await page.locator("#audit tbody th").allInnerTexts();
  assert.equal(second.length, 1);
  assert.ok(Number(second[0]) > Number(first[0]), `${second[0]} after ${first[0]}`);

  // The CSV download, with the page's filters.
  await page.goto(`${BASE}/console/tenants/${TENANT_A}/audit?action=CustomerManagedKeyRotated`);
  const [download] = await Promise.all([
    page.waitForEvent("download"),
    page.getByRole("link", { name: /Download CSV/ }).click(),
  ]);
  const path = await download.path();
  const { readFileSync } = await import("node:fs");
  const csv = readFileSync(path, "utf8");
  const lines = csv.trim().split(/\r?\n/);
  assert.match(lines[0], /^position,occurred_at,/);
  assert.ok(lines.length >= 2);
  assert.ok(lines.slice(1).every((l) => l.includes("CustomerManagedKeyRotated")));
  assert.ok(!csv.includes(SECRET));
  await context.close();
});

test("a cross-site sign-out post is refused and the session kept", async () => {
  const { context, page } = await newPage();
  await signIn(page, TOKENS.auditor);
  // Even with the right CSRF token, a form posted from another origin is refused.
  const csrf = await page.locator('input[name="csrf"]').first().getAttribute("value");
  const attacker = http.createServer((req, res) => {
    res.writeHead(200, { "content-type": "text/html" });
    res.end(`<!doctype html><html lang="en"><body><form id="f" method="post" action="${BASE}/console/sign-out">
      <input type="hidden" name="csrf" value="${csrf}"><button>go</button></form></body></html>`);
  });
  await new Promise((r) => attacker.listen(0, "127.0.0.1", r));
  try {
    const { port } = attacker.address();
    await page.goto(`http://127.0.0.1:${port}/`);
    const [response] = await Promise.all([
      page.waitForResponse((r) => r.url() === `${BASE}/console/sign-out`),
      page.locator("#f button").click(),
    ]);
    assert.equal(response.status(), 403);
    await shot(page, "cross-site-refused");
  } finally {
    attacker.close();
  }
  await page.goto(`${BASE}/console`);
  await assertSignedIn(page);
  await context.close();
});

test("sign-out ends the session", async () => {
  const { context, page } = await newPage();
  await signIn(page, TOKENS.auditor);
  const before = (await context.cookies()).find((c) => c.name === "keyledger_console").value;
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.waitForURL(`${BASE}/console`);
  assert.equal(await page.getByLabel("Bearer token").count(), 1, "the sign-in form again");
  // The old cookie no longer opens a page, even if a client kept it.
  await context.addCookies([{ name: "keyledger_console", value: before, url: `${BASE}/console` }]);
  await page.goto(`${BASE}/console/tenants/${TENANT_A}/audit`);
  assert.equal(await page.getByLabel("Bearer token").count(), 1, "sent back to sign in");
  await context.close();
});

test("an auditor of tenant A cannot open tenant B's audit", async () => {
  const { context, page } = await newPage();
  await signIn(page, TOKENS.auditorA);
  const a = await page.goto(`${BASE}/console/tenants/${TENANT_A}/audit`);
  assert.equal(a.status(), 200);
  const b = await page.goto(`${BASE}/console/tenants/${TENANT_B}/audit`);
  assert.equal(b.status(), 403);
  assert.equal(await page.getByRole("heading", { level: 1 }).innerText(), "Forbidden");
  await shot(page, "forbidden");
  const csv = await page.goto(`${BASE}/console/tenants/${TENANT_B}/audit.csv`);
  assert.equal(csv.status(), 403);
  await context.close();
});

test("other roles' pages: the admin and the platform", async () => {
  for (const token of [TOKENS.admin, TOKENS.platform]) {
    const { context, page } = await newPage();
    await signIn(page, token);
    const r = await page.goto(`${BASE}/console/organizations/${ORG}`);
    assert.equal(r.status(), 200);
    await page.goto(`${BASE}/console/tenants/${TENANT_A}/audit`);
    await context.close();
  }
});

test("no secret in any page's HTML", () => {
  assert.ok(seen.length >= 10, `pages seen: ${seen.length}`);
  for (const { url, html } of seen) {
    if (!url.startsWith(BASE)) continue; // the attacker's page carries the CSRF token itself
    assert.ok(!html.includes(SECRET), `the client secret on ${url}`);
    for (const [role, token] of Object.entries(TOKENS)) {
      assert.ok(!html.includes(token), `the ${role} token on ${url}`);
    }
  }
});
