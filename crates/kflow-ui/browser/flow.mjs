// kflow's web UI in a real Chromium, as a user goes through it. Run by the `browser` test of
// the kflow crate (crates/kflow/tests/browser.rs), which starts the server and passes:
//   KFLOW_URL, KFLOW_ADMIN_TOKEN, KFLOW_VIEWER_TOKEN, KFLOW_CHROMIUM, and optionally
//   KFLOW_SCREENSHOTS (a folder: the main pages are saved there as PNG).
// Prints one line per step; exits non-zero at the first step that fails.
import { chromium } from "playwright-core";

const base = process.env.KFLOW_URL;
const admin = process.env.KFLOW_ADMIN_TOKEN;
const viewer = process.env.KFLOW_VIEWER_TOKEN;
const shots = process.env.KFLOW_SCREENSHOTS || "";
const T = 20000;

function check(cond, what) {
  if (!cond) { throw new Error("failed: " + what); }
  console.log("ok: " + what);
}

const DOC = (version, body) => `document:
  dsl: '1.0.0'
  namespace: browser
  name: greeter
  version: '${version}'
input:
  schema:
    format: json
    document:
      type: object
      required: [name]
      properties:
        name: {type: string, description: who to greet}
        times: {type: integer, default: 1}
        mood: {enum: [happy, grumpy]}
do:
${body}`;

const V1 = DOC("1.0.0", `  - greet:
      set:
        greeting: '\${ "Hello, " + .name }'
  - pause:
      wait: {milliseconds: 1500}
  - shout:
      set:
        loud: '\${ .greeting + "!" }'
`);

const V2 = DOC("1.1.0", `  - greet:
      set:
        greeting: '\${ "Hi, " + .name }'
  - pause:
      wait: {milliseconds: 1500}
  - extra:
      set:
        more: true
`);

const pageErrors = [];

async function signIn(context, token) {
  const page = await context.newPage();
  page.on("pageerror", (e) => pageErrors.push(e.message));
  await page.goto(base + "/ui/instances");
  check(page.url().includes("/ui/login"), "an unsigned browser is sent to the sign-in page");
  await page.fill("input[name=token]", token);
  await Promise.all([page.waitForURL(/\/ui\/instances/), page.click("button[type=submit]")]);
  check((await page.textContent("h1")).includes("Instances"), "signed in, the instances page shows");
  return page;
}

async function shot(page, name) {
  if (shots) { await page.screenshot({ path: `${shots}/${name}.png` }); }
}

// Types into the editor as a user would (the script checks after a pause in typing).
async function typeDoc(page, text) {
  await page.fill("#doc", text);
  await page.dispatchEvent("#doc", "input");
}

const browser = await chromium.launch({
  executablePath: process.env.KFLOW_CHROMIUM,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
try {
  const adminCtx = await browser.newContext({ viewport: { width: 1400, height: 900 } });
  const page = await signIn(adminCtx, admin);

  // ---- Register a workflow in the editor: an error at its line first, then fixed and saved.
  await page.goto(base + "/ui/editor");
  const broken = V1.replace("wait: {milliseconds: 1500}", "wait: {milliseconds: 1500}\n      then: nowhere");
  await typeDoc(page, broken);
  const diag = page.locator("li.diag").first();
  await diag.waitFor({ timeout: T });
  const line = Number(await diag.getAttribute("data-line"));
  const expectedLine = broken.split("\n").findIndex((l) => l.includes("then: nowhere")) + 1;
  check(line === expectedLine, `the editor shows the error at line ${expectedLine} (got ${line}): ${await diag.textContent()}`);
  check((await page.locator("#gutter span.err").count()) >= 1, "the gutter marks the line in error");
  await shot(page, "editor-error");
  await typeDoc(page, V1);
  await page.locator("#check[data-valid=true]").waitFor({ timeout: T });
  await page.locator("#editor-graph svg g.node[data-id='/do/1/pause']").waitFor({ timeout: T });
  check(true, "fixed: valid, and the graph is drawn beside the text");
  await shot(page, "editor");
  await Promise.all([page.waitForURL(/\/ui\/workflows\/browser\/greeter/), page.click("#save")]);
  check((await page.textContent("h1")).includes("@1.0.0"), "saved: the workflow page of version 1.0.0");
  check((await page.locator("svg.graph g.node").count()) === 5, "its graph has start, 3 tasks, end");
  await shot(page, "workflow");

  // Saving the same version with other content is refused with the message.
  await page.goto(base + "/ui/editor?namespace=browser&name=greeter&version=1.0.0");
  await page.locator("#check[data-valid=true]").waitFor({ timeout: T });
  await typeDoc(page, V1.replace("Hello, ", "Howdy, "));
  await page.locator("#check[data-valid=true]").waitFor({ timeout: T });
  await page.click("#save");
  await page.locator("#save-result:not([hidden])").waitFor({ timeout: T });
  check((await page.textContent("#save-result")).includes("already registered"), "a changed document under an existing version is refused, with the reason");

  // ---- Start it from the generated form: a field error first.
  await page.goto(base + "/ui/workflows/browser/greeter/start");
  check(await page.locator("[data-path='/name'][data-kind=string]").count() === 1, "the form has a text field for the required name");
  check(await page.locator("select[data-path='/mood']").count() === 1, "an enum is a choice");
  check((await page.inputValue("[data-path='/times']")) === "1", "the default is filled in");
  await page.click("#start-form button[type=submit]");
  const fieldError = page.locator(".field-error[data-for='/name']");
  await fieldError.filter({ hasText: /required/ }).waitFor({ timeout: T });
  check(true, "a missing required field is shown at the field: " + (await fieldError.textContent()));
  await shot(page, "start-form");
  await page.fill("[data-path='/name']", "<b>Ada</b>");
  await Promise.all([page.waitForURL(/\/ui\/instances\/[0-9a-f-]+$/), page.click("#start-form button[type=submit]")]);
  const instanceUrl = page.url();
  check(true, "started: the instance page opens");

  // ---- Watch it complete live: events arrive on the open page (no reload) until the end.
  await page.evaluate(() => { window.__sameLoad = true; });
  const before = Number(await page.getAttribute("#live", "data-last"));
  await page.waitForFunction((n) => Number(document.querySelector("#live").dataset.last) > n && window.__sameLoad === true, before, { timeout: T });
  check(true, "live history events arrived over the stream without a reload");
  await shot(page, "instance-running");
  await page.locator("#status .badge[data-status=completed]").waitFor({ timeout: T });
  await page.locator("#graph g.node.completed[data-id='/do/2/shout']").waitFor({ timeout: T });
  check(true, "the instance completed and its graph shows every task completed");
  check((await page.textContent("pre.json >> nth=1")).includes("Hello, <b>Ada</b>!"), "the output is shown as text (markup in the input is not run)");
  check((await page.locator("main b").count()) === 0, "no element came from the input");

  // ---- Its timeline.
  const bars = await page.locator("svg.timeline g.bar").count();
  check(bars === 3, `the timeline has a bar per task run (${bars})`);
  const pauseWidth = Number(await page.locator("svg.timeline g.bar[data-id='/do/1/pause'] rect").getAttribute("width"));
  const greetWidth = Number(await page.locator("svg.timeline g.bar[data-id='/do/0/greet'] rect").getAttribute("width"));
  check(pauseWidth > greetWidth, "the 1.5 s wait is the longest bar");
  await shot(page, "instance");
  // The system's dark mode is followed.
  await page.emulateMedia({ colorScheme: "dark" });
  const bg = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  check(bg !== "rgb(247, 247, 248)", `dark mode changes the colours (${bg})`);
  await shot(page, "instance-dark");
  await page.emulateMedia({ colorScheme: "light" });

  // ---- Diff two versions.
  await page.goto(base + "/ui/editor?namespace=browser&name=greeter&version=1.0.0");
  await page.locator("#check[data-valid=true]").waitFor({ timeout: T });
  await typeDoc(page, V2);
  await page.locator("#check[data-valid=true][data-title='browser/greeter@1.1.0']").waitFor({ timeout: T });
  await Promise.all([page.waitForURL(/version=1.1.0/), page.click("#save")]);
  await page.click("text=diff with 1.0.0");
  await page.waitForURL(/\/diff\?/);
  check((await page.textContent(".chip.added")).trim().startsWith("1"), "the diff counts 1 added task");
  check((await page.textContent(".chip.removed")).trim().startsWith("1"), "and 1 removed task");
  check(await page.locator("svg.graph g.node.added[data-id='/do/2/extra']").count() === 1, "the added task is marked on the new graph");
  check(await page.locator("svg.graph g.node.removed[data-id='/do/2/shout']").count() === 1, "the removed one on the old graph");
  check(await page.locator("svg.graph g.node.changed[data-id='/do/0/greet']").count() >= 1, "the changed one on both");
  check(await page.locator("table.diff tr.add").count() > 0 && await page.locator("table.diff tr.del").count() > 0, "the text diff shows added and removed lines");
  await shot(page, "diff");

  // ---- A faulted instance, retried from its failed task.
  const failing = await page.evaluate(async () => {
    const doc = "document: {dsl: '1.0.0', namespace: browser, name: flaky, version: '1.0.0'}\n" +
      "do:\n  - prepare:\n      set: {ready: true}\n  - call:\n      call: http\n" +
      "      with: {method: get, endpoint: 'http://127.0.0.1:9/nothing'}\n";
    await fetch("/api/v1/definitions", { method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/yaml" }, body: doc });
    const r = await fetch("/api/v1/instances", {
      method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ namespace: "browser", name: "flaky", input: {}, wait: true }),
    });
    return (await r.json()).id;
  });
  await page.goto(base + "/ui/instances/" + failing);
  await page.locator("#status .badge[data-status=faulted]").waitFor({ timeout: T });
  check(await page.locator("#graph g.node.faulted[data-id='/do/1/call']").count() === 1, "the failed task is red on the graph");
  await shot(page, "instance-faulted");
  await Promise.all([
    page.waitForURL((u) => u.pathname.startsWith("/ui/instances/") && !u.pathname.endsWith(failing)),
    page.click("button[data-retry='/do/1/call']"),
  ]);
  check((await page.textContent("main")).includes("A retry of " + failing), "retried from the failed task: a new instance that names the original");

  await page.goto(base + "/ui/instances");
  await shot(page, "instances");

  // ---- A viewer sees no cancel button, and the API refuses the viewer's cancel.
  const running = await page.evaluate(async () => {
    const doc = "document: {dsl: '1.0.0', namespace: browser, name: slow, version: '1.0.0'}\n" +
      "do:\n  - sleep:\n      wait: {minutes: 10}\n";
    await fetch("/api/v1/definitions", { method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/yaml" }, body: doc });
    const r = await fetch("/api/v1/instances", {
      method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ namespace: "browser", name: "slow", input: {} }),
    });
    return (await r.json()).id;
  });
  const viewerCtx = await browser.newContext({ viewport: { width: 390, height: 844 } });
  const vpage = await signIn(viewerCtx, viewer);
  await vpage.goto(base + "/ui/instances/" + running);
  check(await vpage.locator("button[data-action=cancel]").count() === 0, "a viewer sees no cancel button");
  const status = await vpage.evaluate(async (id) => {
    const r = await fetch(`/api/v1/instances/${id}/cancel`, { method: "POST", credentials: "same-origin" });
    return r.status;
  }, running);
  check(status === 403, `the API refuses the viewer's cancel (${status})`);
  await shot(vpage, "instance-phone");
  // Unknown pages and instances are a 404 page, not a blank one.
  const missing = await vpage.goto(base + "/ui/instances/00000000-0000-0000-0000-000000000000");
  check(missing.status() === 404 && (await vpage.textContent("h1")).includes("404"), "an unknown instance is a 404 page");

  // The admin can cancel from the page.
  const apage = await adminCtx.newPage();
  await apage.goto(base + "/ui/instances/" + running);
  check(await apage.locator("#graph g.node.waiting[data-id='/do/0/sleep']").count() === 1, "a task waiting on its timer is shown waiting");
  apage.once("dialog", (d) => d.accept());
  await apage.click("button[data-action=cancel]");
  await apage.locator("#status .badge[data-status=cancelled]").waitFor({ timeout: T });
  check(true, "the admin cancels a running instance from its page");
  check(pageErrors.length === 0, "no script error in any page " + JSON.stringify(pageErrors));
  console.log("all steps passed");
} finally {
  await browser.close();
}
