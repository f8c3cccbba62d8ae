"""Serve kflow worker functions (`call: worker`) from Python.

A `Worker` registers with a kflow server for some queues, long-polls for tasks, runs the
handler registered for each task's function in a thread, heartbeats the leases it holds, and
reports each result. Standard library only.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

__all__ = ["Worker", "WorkflowError", "Context", "KflowError"]
__version__ = "0.1.0"

log = logging.getLogger("kflow_worker")


class KflowError(Exception):
    """The server answered with an error (its status and message)."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class WorkflowError(Exception):
    """Raised by a handler: the task fails with this workflow error."""

    def __init__(self, type: str, status: int, title: str, detail: Optional[str] = None):
        super().__init__(detail or title)
        self.type = type
        self.status = status
        self.title = title
        self.detail = detail

    def to_json(self) -> Dict[str, Any]:
        e = {"type": self.type, "status": self.status, "title": self.title}
        if self.detail is not None:
            e["detail"] = self.detail
        return e


@dataclass
class Context:
    """What a handler knows of its task."""

    lease: str
    instance: str
    effect: int
    task: str
    attempt: int
    function: str
    #: Set when the task is cancelled or its lease is lost: stop, the result will be dropped.
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def idempotency_key(self) -> str:
        """The same when kflow runs this task again after a crash."""
        return f"{self.instance}-{self.effect}"


Handler = Callable[[Any, Context], Any]


class Worker:
    """A remote worker serving `queues` with the handlers registered by `function`."""

    def __init__(
        self,
        server: str,
        token: str,
        queues: List[str],
        id: Optional[str] = None,
        labels: Optional[Dict[str, str]] = None,
        concurrency: int = 8,
        timeout: float = 30.0,
    ):
        if not queues:
            raise ValueError("a worker serves at least one queue")
        if "default" in queues:
            raise ValueError("'default' is the server's own queue: name the queue your functions use")
        self.server = server.rstrip("/")
        self.token = token
        self.queues = list(queues)
        self.labels = dict(labels or {})
        self.concurrency = max(1, int(concurrency))
        self.timeout = timeout
        self.id = id
        self.handlers: Dict[str, Handler] = {}
        self._running: Dict[str, Context] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="kflow-handler")
        self._heartbeat_ms = 1000

    # --- handlers ------------------------------------------------------------------------

    def function(self, name: str) -> Callable[[Handler], Handler]:
        """Registers the decorated `handler(arguments, ctx)` for the function `name`."""

        def register(handler: Handler) -> Handler:
            if name in self.handlers:
                raise ValueError(f"a handler for {name} is registered already")
            self.handlers[name] = handler
            return handler

        return register

    # --- the protocol --------------------------------------------------------------------

    def _call(self, method: str, path: str, body: Any = None, timeout: Optional[float] = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as r:
                text = r.read()
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace")
            try:
                message = json.loads(text).get("error", {}).get("message", text)
            except (ValueError, AttributeError):
                message = text
            raise KflowError(e.code, message) from None
        return json.loads(text) if text else None

    def register(self) -> None:
        """Registers (again) with the server; done by `run`."""
        body: Dict[str, Any] = {"queues": self.queues, "labels": self.labels,
                                "capacity": f"tasks={self.concurrency}"}
        if self.id:
            body["id"] = self.id
        r = self._call("POST", "/api/v1/workers", body)
        self.id = r["id"]
        self._heartbeat_ms = int(r.get("heartbeat_ms", 1000))
        log.info("registered as %s for %s", self.id, ", ".join(self.queues))

    def run(self) -> None:
        """Serves until `stop()`; then finishes the tasks it holds."""
        self.register()
        beat = threading.Thread(target=self._heartbeats, name="kflow-heartbeat", daemon=True)
        beat.start()
        try:
            while not self._stop.is_set():
                with self._lock:
                    free = self.concurrency - len(self._running)
                if free <= 0:
                    time.sleep(0.05)
                    continue
                try:
                    r = self._call("POST", f"/api/v1/workers/{self.id}/poll",
                                   {"max": free, "wait_ms": 1000}, timeout=self.timeout + 5)
                except KflowError as e:
                    if e.status == 404:
                        self.register()  # the server forgot this worker (a restart)
                        continue
                    log.warning("polling failed: %s", e)
                    self._stop.wait(1.0)
                    continue
                except OSError as e:
                    log.warning("polling failed: %s", e)
                    self._stop.wait(1.0)
                    continue
                for lease in r.get("leases", []):
                    self._start(lease)
        finally:
            self._pool.shutdown(wait=True)
            self._stop.set()

    def stop(self) -> None:
        """Takes no new tasks; `run` returns once the held ones are reported."""
        if self.id and not self._stop.is_set():
            try:
                self._call("POST", f"/api/v1/workers/{self.id}/drain")
            except (KflowError, OSError):
                pass
        self._stop.set()

    def _start(self, lease: Dict[str, Any]) -> None:
        effect = lease.get("effect_def", {})
        ctx = Context(
            lease=lease["lease"],
            instance=lease["instance"],
            effect=int(lease["effect"]),
            task=lease.get("task", ""),
            attempt=int(lease.get("attempt", 1)),
            function=effect.get("function", ""),
        )
        with self._lock:
            self._running[ctx.lease] = ctx
        self._pool.submit(self._run_one, ctx, effect)

    def _run_one(self, ctx: Context, effect: Dict[str, Any]) -> None:
        try:
            if effect.get("kind") != "function":
                raise WorkflowError(
                    "configuration", 400, "Not A Worker Function",
                    f"this worker serves worker functions, not '{effect.get('kind')}' tasks")
            handler = self.handlers.get(ctx.function)
            if handler is None:
                raise WorkflowError(
                    "configuration", 404, "No Handler",
                    f"no handler for {ctx.function} on worker {self.id} "
                    f"(handlers: {', '.join(sorted(self.handlers)) or 'none'})")
            result = {"output": handler(effect.get("arguments"), ctx)}
            json.dumps(result)  # not JSON: a handler error, not a lost report
        except WorkflowError as e:
            result = {"error": e.to_json()}
        except Exception as e:  # noqa: BLE001 - every failure reaches the workflow
            log.debug("handler failed: %s", traceback.format_exc())
            result = {"error": {"type": "runtime", "status": 500, "title": "Handler Error",
                                "detail": f"{ctx.function}: {type(e).__name__}: {e}"}}
        self._report(ctx, result)

    def _report(self, ctx: Context, result: Dict[str, Any]) -> None:
        body = dict(result, worker=self.id)
        try:
            for attempt in range(5):
                try:
                    self._call("POST", f"/api/v1/leases/{ctx.lease}/complete", body)
                    return
                except KflowError as e:
                    if e.status in (404, 409):
                        log.info("the result of %s was refused (%s): the task was cancelled or "
                                 "its lease lost", ctx.lease, e.message)
                        return
                    if attempt == 4:
                        raise
                except OSError:
                    if attempt == 4:
                        raise
                time.sleep(0.2 * (attempt + 1))
        except (KflowError, OSError) as e:
            log.warning("reporting %s failed: %s (the lease will expire and the task run again)",
                        ctx.lease, e)
        finally:
            with self._lock:
                self._running.pop(ctx.lease, None)

    def _heartbeats(self) -> None:
        while True:
            with self._lock:
                running = list(self._running)
            if self._stop.is_set() and not running:
                return
            try:
                r = self._call("POST", f"/api/v1/workers/{self.id}/heartbeat", {"running": running})
                for lease in r.get("stop", []):
                    with self._lock:
                        ctx = self._running.get(lease)
                    if ctx is not None:
                        ctx.cancelled.set()
            except (KflowError, OSError) as e:
                log.warning("heartbeat failed: %s", e)
            time.sleep(max(0.05, self._heartbeat_ms / 1000.0))
