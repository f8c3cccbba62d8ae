// Time to first paint of an instance page with 1,000 task runs, and of a workflow page whose
// graph has 300 tasks, measured in Chromium (the browser's own first-contentful-paint, from the
// navigation's start). Run by `cargo nextest run -p kflow --test browser --run-ignored only`
// (see BENCHMARKS.md). Env: KFLOW_URL, KFLOW_ADMIN_TOKEN, KFLOW_CHROMIUM; ROUNDS (default 7).
// Prints one JSON line per page: {page, runs, median_ms, min_ms, max_ms, html_bytes}.
import { chromium } from "playwright-core";

const base = process.env.KFLOW_URL;
const token = process.env.KFLOW_ADMIN_TOKEN;
const rounds = Number(process.env.ROUNDS || 7);

async function api(method, path, body, type) {
  const r = await fetch(base + path, {
    method,
    headers: { Authorization: `Bearer ${token}`, "Content-Type": type || "application/json" },
    body,
  });
  const text = await r.text();
  if (!r.ok) { throw new Error(`${method} ${path}: ${r.status} ${text}`); }
  return JSON.parse(text);
}

const head = (name) => `document:
  dsl: '1.0.0'
  namespace: bench
  name: ${name}
  version: '1.0.0'
`;
// 1,000 task runs: a loop of 1,000 iterations.
await api("POST", "/api/v1/definitions", head("thousand") + `do:
  - each:
      for: {each: i, in: '\${ [range(0; 1000)] }'}
      do:
        - step: {set: {v: '\${ $i }'}}
`, "application/yaml");
// A graph of 300 tasks: 30 stages of a fork of 9 branches, one after the other.
let big = head("wide") + "do:\n";
for (let s = 0; s < 30; s++) {
  big += `  - stage${s}:\n      fork:\n        branches:\n`;
  for (let b = 0; b < 9; b++) { big += `          - s${s}b${b}: {set: {v: ${b}}}\n`; }
}
await api("POST", "/api/v1/definitions", big, "application/yaml");
const run = await api("POST", "/api/v1/instances", JSON.stringify({ namespace: "bench", name: "thousand", input: {}, wait: true, wait_seconds: 120 }));
if (run.status !== "completed") { throw new Error("the loop did not complete: " + JSON.stringify(run).slice(0, 300)); }

const browser = await chromium.launch({ executablePath: process.env.KFLOW_CHROMIUM, args: ["--no-sandbox", "--disable-gpu"] });
try {
  const ctx = await browser.newContext({ viewport: { width: 1400, height: 900 } });
  await ctx.addCookies([{ name: "kflow_token", value: token, url: base }]);
  const page = await ctx.newPage();
  for (const [name, path] of [["instance with 1,000 task runs", `/ui/instances/${run.id}`], ["workflow with 300 tasks", "/ui/workflows/bench/wide"]]) {
    const times = [];
    let bytes = 0;
    for (let i = 0; i < rounds + 1; i++) {
      const resp = await page.goto(base + path, { waitUntil: "load" });
      if (resp.status() !== 200) { throw new Error(`${path}: ${resp.status()}`); }
      bytes = (await resp.body()).length;
      const fcp = await page.evaluate(() => new Promise((resolve) => {
        const done = () => {
          const e = performance.getEntriesByName("first-contentful-paint")[0];
          if (e) { resolve(e.startTime); return true; }
          return false;
        };
        if (!done()) { new PerformanceObserver(() => done()).observe({ type: "paint", buffered: true }); }
      }));
      if (i > 0) { times.push(fcp); } // the first load warms caches
    }
    times.sort((a, b) => a - b);
    console.log(JSON.stringify({
      page: name, runs: times.length, median_ms: Math.round(times[Math.floor(times.length / 2)]),
      min_ms: Math.round(times[0]), max_ms: Math.round(times[times.length - 1]), html_bytes: bytes,
    }));
  }
} finally {
  await browser.close();
}
