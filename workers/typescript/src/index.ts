/**
 * Serve kflow worker functions (`call: worker`) from Node.js.
 *
 * A `Worker` registers with a kflow server for some queues, long-polls for tasks, runs the
 * handler registered for each task's function, heartbeats the leases it holds, and reports each
 * result.
 */

export class KflowError extends Error {
  constructor(
    public readonly status: number,
    message: string,
  ) {
    super(`${status}: ${message}`);
  }
}

/** Thrown by a handler: the task fails with this workflow error. */
export class WorkflowError extends Error {
  constructor(
    public readonly type: string,
    public readonly status: number,
    public readonly title: string,
    public readonly detail?: string,
  ) {
    super(detail ?? title);
  }

  toJSON(): Record<string, unknown> {
    const e: Record<string, unknown> = { type: this.type, status: this.status, title: this.title };
    if (this.detail !== undefined) e.detail = this.detail;
    return e;
  }
}

/** What a handler knows of its task. */
export interface Context {
  lease: string;
  instance: string;
  effect: number;
  task: string;
  attempt: number;
  function: string;
  /** The same when kflow runs this task again after a crash. */
  idempotencyKey: string;
  /** Aborted when the task is cancelled or its lease is lost: stop, the result will be dropped. */
  signal: AbortSignal;
}

export type Handler = (args: any, ctx: Context) => unknown | Promise<unknown>;

export interface WorkerOptions {
  server: string;
  token: string;
  queues: string[];
  id?: string;
  labels?: Record<string, string>;
  concurrency?: number;
}

interface Lease {
  lease: string;
  instance: string;
  effect: number;
  task: string;
  attempt: number;
  effect_def: { kind: string; function?: string; arguments?: unknown };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export class Worker {
  readonly server: string;
  readonly queues: string[];
  id?: string;
  private readonly token: string;
  private readonly labels: Record<string, string>;
  private readonly concurrency: number;
  private readonly handlers = new Map<string, Handler>();
  private readonly running = new Map<string, { ctx: Context; abort: AbortController; done: Promise<void> }>();
  private stopping = false;
  private heartbeatMs = 1000;

  constructor(opts: WorkerOptions) {
    if (!opts.queues?.length) throw new Error("a worker serves at least one queue");
    if (opts.queues.includes("default")) {
      throw new Error("'default' is the server's own queue: name the queue your functions use");
    }
    this.server = opts.server.replace(/\/+$/, "");
    this.token = opts.token;
    this.queues = [...opts.queues];
    this.id = opts.id;
    this.labels = { ...(opts.labels ?? {}) };
    this.concurrency = Math.max(1, Math.floor(opts.concurrency ?? 8));
  }

  /** Registers `handler(args, ctx)` for the function `name`. */
  function(name: string, handler: Handler): this {
    if (this.handlers.has(name)) throw new Error(`a handler for ${name} is registered already`);
    this.handlers.set(name, handler);
    return this;
  }

  private async call(method: string, path: string, body?: unknown, timeoutMs = 30_000): Promise<any> {
    const r = await fetch(this.server + path, {
      method,
      headers: {
        authorization: `Bearer ${this.token}`,
        ...(body === undefined ? {} : { "content-type": "application/json" }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(timeoutMs),
    });
    const text = await r.text();
    if (!r.ok) {
      let message = text;
      try {
        message = JSON.parse(text)?.error?.message ?? text;
      } catch {
        /* not JSON: the text itself */
      }
      throw new KflowError(r.status, message);
    }
    return text ? JSON.parse(text) : null;
  }

  /** Registers (again) with the server; done by `run`. */
  async register(): Promise<void> {
    const r = await this.call("POST", "/api/v1/workers", {
      ...(this.id ? { id: this.id } : {}),
      queues: this.queues,
      labels: this.labels,
      capacity: `tasks=${this.concurrency}`,
    });
    this.id = r.id;
    this.heartbeatMs = Number(r.heartbeat_ms ?? 1000);
  }

  /** Serves until `stop()`; then finishes the tasks it holds. */
  async run(): Promise<void> {
    await this.register();
    const beats = this.heartbeats();
    while (!this.stopping) {
      const free = this.concurrency - this.running.size;
      if (free <= 0) {
        await sleep(50);
        continue;
      }
      let r: { leases: Lease[] };
      try {
        r = await this.call("POST", `/api/v1/workers/${this.id}/poll`, { max: free, wait_ms: 1000 }, 35_000);
      } catch (e) {
        if (e instanceof KflowError && e.status === 404) {
          await this.register(); // the server forgot this worker (a restart)
          continue;
        }
        await sleep(1000);
        continue;
      }
      for (const lease of r.leases ?? []) this.start(lease);
    }
    await Promise.all([...this.running.values()].map((t) => t.done));
    await beats;
  }

  /** Takes no new tasks; `run` resolves once the held ones are reported. */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    if (this.id) {
      await this.call("POST", `/api/v1/workers/${this.id}/drain`).catch(() => undefined);
    }
  }

  private start(lease: Lease): void {
    const abort = new AbortController();
    const ctx: Context = {
      lease: lease.lease,
      instance: lease.instance,
      effect: Number(lease.effect),
      task: lease.task,
      attempt: Number(lease.attempt ?? 1),
      function: lease.effect_def?.function ?? "",
      idempotencyKey: `${lease.instance}-${lease.effect}`,
      signal: abort.signal,
    };
    const done = this.runOne(ctx, lease.effect_def).finally(() => this.running.delete(ctx.lease));
    this.running.set(ctx.lease, { ctx, abort, done });
  }

  private async runOne(ctx: Context, effect: Lease["effect_def"]): Promise<void> {
    let result: { output?: unknown; error?: unknown };
    try {
      if (effect?.kind !== "function") {
        throw new WorkflowError(
          "configuration",
          400,
          "Not A Worker Function",
          `this worker serves worker functions, not '${effect?.kind}' tasks`,
        );
      }
      const handler = this.handlers.get(ctx.function);
      if (!handler) {
        const known = [...this.handlers.keys()].sort().join(", ") || "none";
        throw new WorkflowError(
          "configuration",
          404,
          "No Handler",
          `no handler for ${ctx.function} on worker ${this.id} (handlers: ${known})`,
        );
      }
      const output = await handler(effect.arguments, ctx);
      JSON.stringify(output ?? null); // not JSON: a handler error, not a lost report
      result = { output: output ?? null };
    } catch (e) {
      result =
        e instanceof WorkflowError
          ? { error: e.toJSON() }
          : {
              error: {
                type: "runtime",
                status: 500,
                title: "Handler Error",
                detail: `${ctx.function}: ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}`,
              },
            };
    }
    for (let attempt = 0; attempt < 5; attempt++) {
      try {
        await this.call("POST", `/api/v1/leases/${ctx.lease}/complete`, { worker: this.id, ...result });
        return;
      } catch (e) {
        // Refused: the task was cancelled or its lease lost.
        if (e instanceof KflowError && (e.status === 404 || e.status === 409)) return;
        await sleep(200 * (attempt + 1));
      }
    }
  }

  private async heartbeats(): Promise<void> {
    while (!this.stopping || this.running.size > 0) {
      try {
        const r = await this.call("POST", `/api/v1/workers/${this.id}/heartbeat`, {
          running: [...this.running.keys()],
        });
        for (const lease of r.stop ?? []) this.running.get(lease)?.abort.abort();
      } catch {
        /* tried again at the next beat */
      }
      await sleep(Math.max(50, this.heartbeatMs));
    }
  }
}
