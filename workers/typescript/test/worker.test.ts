// End to end against a real kflow server (KFLOW_URL, KFLOW_TOKEN: an admin token). kflow's own
// test suite starts the server and runs these; without the variables they skip (and fail
// under CI=true).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";

import { Worker, WorkflowError } from "../src/index.js";

const URL = process.env.KFLOW_URL;
const TOKEN = process.env.KFLOW_TOKEN;
if (!URL && (process.env.CI === "true" || process.env.CI === "1")) {
  throw new Error("KFLOW_URL is missing, and CI=true: CI never passes by skipping");
}
const skip = !(URL && TOKEN) && "KFLOW_URL and KFLOW_TOKEN name a running kflow server";

async function api(method: string, path: string, body?: unknown, type = "application/json") {
  const r = await fetch(URL + path, {
    method,
    headers: { authorization: `Bearer ${TOKEN}`, ...(body === undefined ? {} : { "content-type": type }) },
    body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
  });
  const text = await r.text();
  return { status: r.status, body: text ? JSON.parse(text) : null };
}

const ns = "ts" + randomUUID().replace(/-/g, "").slice(0, 8);
const queue = `images-${ns}`;
const calls: { args: any; key: string; attempt: number; instance: string; effect: number }[] = [];
let started!: () => void;
const startedP = new Promise<void>((r) => (started = r));
let sawCancel!: () => void;
const sawCancelP = new Promise<void>((r) => (sawCancel = r));
let worker: Worker;
let running: Promise<void>;

before(async () => {
  if (skip) return;
  const doc = `document:
  dsl: '1.0.3'
  namespace: ${ns}
  name: thumbs
  version: '1.0.0'
use:
  functions:
    acme.resize:
      call: worker
      with: {queue: ${queue}, function: acme.resize}
do:
  - thumb:
      try:
        - resize:
            call: acme.resize
            with: {url: '\${ .url }', width: '\${ .width }'}
      catch:
        errors:
          with: {type: validation, title: Bad Width}
        as: err
        do:
          - fallback:
              set: {fallback: '\${ $err.detail }', status: '\${ $err.status }'}
`;
  const r = await api("POST", "/api/v1/definitions", doc, "application/yaml");
  assert.equal(r.status, 201, JSON.stringify(r.body));
  worker = new Worker({ server: URL!, token: TOKEN!, queues: [queue], concurrency: 4 });
  worker.function("acme.resize", async (args, ctx) => {
    calls.push({ args, key: ctx.idempotencyKey, attempt: ctx.attempt, instance: ctx.instance, effect: ctx.effect });
    if (args.url === "slow") {
      started();
      await new Promise<void>((resolve) => ctx.signal.addEventListener("abort", () => resolve(), { once: true }));
      sawCancel();
      return { late: true };
    }
    if (args.width <= 0) throw new WorkflowError("validation", 422, "Bad Width", `width ${args.width} is not positive`);
    if (args.url === "boom") throw new TypeError("the image is corrupt");
    return { url: `${args.url}?w=${args.width}`, width: args.width };
  });
  running = worker.run();
});

after(async () => {
  if (skip) return;
  await worker.stop();
  await running;
});

async function start(url: string, width: number, wait = true) {
  const r = await api("POST", "/api/v1/instances", { namespace: ns, name: "thumbs", input: { url, width }, wait });
  assert.ok(r.status < 300, JSON.stringify(r.body));
  return r.body;
}

test("the handler's result is the task's output", { skip }, async () => {
  const v = await start("https://img/a.png", 200);
  assert.equal(v.status, "completed", JSON.stringify(v));
  assert.deepEqual(v.output, { url: "https://img/a.png?w=200", width: 200 });
  const c = calls.find((c) => c.args.url === "https://img/a.png")!;
  assert.deepEqual(c.args, { url: "https://img/a.png", width: 200 });
  assert.equal(c.key, `${c.instance}-${c.effect}`);
  assert.equal(c.attempt, 1);
  assert.equal(c.instance, v.id);
  const h = await api("GET", `/api/v1/instances/${v.id}/history`);
  assert.ok(JSON.stringify(h.body).includes("https://img/a.png?w=200"), "journaled");
});

test("a WorkflowError is typed and catchable", { skip }, async () => {
  const v = await start("https://img/b.png", 0);
  assert.equal(v.status, "completed", JSON.stringify(v));
  assert.deepEqual(v.output, { fallback: "width 0 is not positive", status: 422 });
});

test("an exception is a runtime error", { skip }, async () => {
  const v = await start("boom", 10);
  assert.equal(v.status, "faulted", JSON.stringify(v));
  assert.equal(v.error.title, "Handler Error");
  assert.equal(v.error.detail, "acme.resize: TypeError: the image is corrupt");
  assert.ok(String(v.error.type).endsWith("runtime"));
});

test("cancellation reaches the handler", { skip }, async () => {
  const v = await start("slow", 10, false);
  await startedP;
  const c = await api("POST", `/api/v1/instances/${v.id}/cancel`);
  assert.ok(c.status < 300, JSON.stringify(c.body));
  await sawCancelP;
  const got = await api("GET", `/api/v1/instances/${v.id}`);
  assert.equal(got.body.status, "cancelled");
});

test("bad setups are refused", () => {
  assert.throws(() => new Worker({ server: "http://x", token: "t", queues: [] }));
  assert.throws(() => new Worker({ server: "http://x", token: "t", queues: ["default"] }));
  const w = new Worker({ server: "http://x", token: "t", queues: ["q"] });
  w.function("f", (a) => a);
  assert.throws(() => w.function("f", (a) => a));
});
