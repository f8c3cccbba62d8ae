// kflow's web UI script: live updates and forms. Hand-written, no dependencies, no build step.
// Everything it shows from the server goes through textContent (never innerHTML), except the
// server's own HTML fragments (escaped on the server).
"use strict";

(function () {
  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));

  // Calls the API with the session cookie; resolves to {status, body} (body parsed when JSON).
  async function api(method, path, body, contentType) {
    const init = { method, credentials: "same-origin", headers: {} };
    if (body !== undefined) {
      init.body = body;
      init.headers["Content-Type"] = contentType || "application/json";
    }
    const resp = await fetch(path, init);
    const text = await resp.text();
    let parsed = text;
    try { parsed = JSON.parse(text); } catch (_) { /* not JSON */ }
    return { status: resp.status, body: parsed };
  }

  function errorText(body) {
    if (body && body.error) {
      const details = (body.error.details || []).join("\n");
      return body.error.message + (details ? "\n" + details : "");
    }
    return typeof body === "string" ? body : JSON.stringify(body);
  }

  function showError(el, text) {
    if (!el) { return; }
    el.textContent = text;
    el.hidden = !text;
  }

  // ---- Buttons that act through the API ------------------------------------------------------

  function wireActions() {
    const box = $("#actions[data-id]");
    if (box) {
      box.addEventListener("click", async (ev) => {
        const retryButton = ev.target.closest("button[data-retry]");
        if (retryButton) {
          retryButton.disabled = true;
          const id = encodeURIComponent(box.dataset.id);
          const resp = await api("POST", `/api/v1/instances/${id}/retry`, JSON.stringify({ task: retryButton.dataset.retry }));
          if (resp.status === 201) {
            window.location.href = "/ui/instances/" + encodeURIComponent(resp.body.id);
          } else {
            retryButton.disabled = false;
            showError($("#action-error"), errorText(resp.body));
          }
          return;
        }
        const b = ev.target.closest("button[data-action]");
        if (!b) { return; }
        if (b.dataset.confirm && !window.confirm(b.dataset.confirm)) { return; }
        b.disabled = true;
        const id = encodeURIComponent(box.dataset.id);
        const r = await api("POST", `/api/v1/instances/${id}/${b.dataset.action}`);
        if (r.status >= 200 && r.status < 300) {
          window.location.reload();
        } else {
          b.disabled = false;
          showError($("#action-error"), errorText(r.body));
        }
      });
    }
    $$("button[data-post]").forEach((b) => b.addEventListener("click", async () => {
      b.disabled = true;
      const r = await api("POST", b.dataset.post);
      if (r.status >= 200 && r.status < 300) {
        window.location.reload();
      } else {
        b.disabled = false;
        showError($("#action-error"), errorText(r.body));
      }
    }));
  }

  // ---- Graph: jump to the source line of a task ----------------------------------------------

  function wireGraph() {
    document.addEventListener("click", (ev) => {
      const node = ev.target.closest && ev.target.closest("g.node[data-line]");
      if (!node) { return; }
      const row = document.getElementById("L" + node.dataset.line);
      if (row) {
        $$("tr.hl").forEach((r) => r.classList.remove("hl"));
        row.classList.add("hl");
        row.scrollIntoView({ block: "center" });
      }
    });
  }

  // ---- Instance page: live over server-sent events -------------------------------------------

  const STATES = ["running", "queued", "waiting", "completed", "faulted", "cancelled", "skipped", "retrying"];
  const NOTICE_STATE = {
    "task.started": "running", "task.completed": "completed", "task.faulted": "faulted",
    "task.skipped": "skipped", "task.cancelled": "cancelled", "task.retried": "retrying",
  };

  function setNodeState(reference, state) {
    $$("#graph g.node").forEach((g) => {
      if (g.dataset.id !== reference) { return; }
      STATES.forEach((s) => g.classList.remove(s));
      g.classList.add(state);
    });
  }

  function setStatus(status) {
    const badge = $("#status .badge");
    if (!badge) { return; }
    badge.className = "badge s-" + status;
    badge.dataset.status = status;
    badge.textContent = status;
  }

  function appendHistory(ev) {
    const body = $("#history");
    if (!body) { return; }
    const d = ev.data || {};
    const tr = document.createElement("tr");
    const rest = Object.assign({}, d);
    ["type", "task", "reference", "time"].forEach((k) => delete rest[k]);
    const restText = (d === null || Object.keys(rest).length === 0) ? "" : JSON.stringify(rest).slice(0, 400);
    [String(ev.seq), ev.time, d.type || ev.kind, d.task || "", restText].forEach((text, i) => {
      const td = document.createElement("td");
      td.textContent = text;
      if (i === 1) { td.className = "time"; }
      if (i === 4) { td.className = "mono data"; }
      tr.appendChild(td);
    });
    body.appendChild(tr);
  }

  function wireLive() {
    const live = $("#live[data-watch]");
    if (!live || live.dataset.finished === "true" || !window.EventSource) { return; }
    // The first connection resumes after the last event the page already shows; on a
    // reconnect the browser sends the last id it received (Last-Event-ID).
    const url = live.dataset.watch + "?after=" + encodeURIComponent(live.dataset.last || "0");
    const es = new EventSource(url, { withCredentials: true });
    live.dataset.state = "open";
    es.addEventListener("history", (msg) => {
      let ev;
      try { ev = JSON.parse(msg.data); } catch (_) { return; }
      live.dataset.last = String(ev.seq);
      const d = ev.data || {};
      const state = NOTICE_STATE[d.type];
      if (state && d.reference) { setNodeState(d.reference, state); }
      if (ev.kind === "suspended") { setStatus("suspended"); }
      if (ev.kind === "resumed" || ev.kind === "started") { setStatus("running"); }
      const updated = $("#updated");
      if (updated && ev.time) { updated.textContent = ev.time; }
      appendHistory(ev);
    });
    es.addEventListener("end", (msg) => {
      es.close();
      live.dataset.state = "ended";
      let inst = {};
      try { inst = JSON.parse(msg.data); } catch (_) { /* keep going */ }
      if (inst.status) { setStatus(inst.status); }
      if (inst.status === "completed") { setNodeState("end", "completed"); }
      // Output, error and the final timeline come with the page.
      window.setTimeout(() => window.location.reload(), 600);
    });
    es.addEventListener("error", () => { live.dataset.state = "reconnecting"; });
    es.addEventListener("open", () => { live.dataset.state = "open"; });
  }

  // ---- Lists refreshed in place ---------------------------------------------------------------

  function wireRefresh() {
    const box = $("[data-refresh]");
    if (!box) { return; }
    const every = Math.max(2, Number(box.dataset.refresh) || 5) * 1000;
    window.setInterval(async () => {
      if (document.visibilityState !== "visible") { return; }
      try {
        const resp = await fetch(window.location.href, { credentials: "same-origin" });
        if (!resp.ok) { return; }
        const doc = new DOMParser().parseFromString(await resp.text(), "text/html");
        const fresh = doc.getElementById(box.id);
        if (fresh) { box.replaceChildren(...fresh.childNodes); }
      } catch (_) { /* try again next time */ }
    }, every);
  }

  // ---- Start form ------------------------------------------------------------------------------

  function setAt(root, pointer, value) {
    if (pointer === "") { return value; }
    const keys = pointer.split("/").slice(1).map((k) => k.replace(/~1/g, "/").replace(/~0/g, "~"));
    let at = root;
    keys.forEach((k, i) => {
      if (i === keys.length - 1) { at[k] = value; return; }
      if (typeof at[k] !== "object" || at[k] === null) { at[k] = {}; }
      at = at[k];
    });
    return root;
  }

  function fieldErrorFor(form, path) {
    return $$(".field-error", form).find((e) => e.dataset.for === path);
  }

  function wireStart() {
    const form = $("#start-form");
    if (!form) { return; }
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      $$(".field-error", form).forEach((e) => { e.textContent = ""; });
      showError($("#form-error"), "");
      let input = {};
      let bad = false;
      for (const el of $$("[data-path]", form)) {
        const kind = el.dataset.kind;
        if (kind === "object") { continue; }
        const path = el.dataset.path;
        let value;
        if (kind === "boolean") {
          value = el.checked;
        } else if (el.value.trim() === "") {
          continue;
        } else if (kind === "integer" || kind === "number") {
          value = Number(el.value);
        } else if (kind === "enum" || kind === "json") {
          try { value = JSON.parse(el.value); } catch (e) {
            const slot = fieldErrorFor(form, path || "/");
            if (slot) { slot.textContent = "not valid JSON: " + e.message; }
            bad = true;
            continue;
          }
        } else {
          value = el.value;
        }
        input = setAt(input, path, value);
      }
      if (bad) { return; }
      const req = {
        namespace: form.dataset.namespace, name: form.dataset.name,
        version: form.dataset.version, input,
      };
      const r = await api("POST", "/api/v1/instances", JSON.stringify(req));
      if (r.status === 201 || r.status === 200) {
        window.location.href = "/ui/instances/" + encodeURIComponent(r.body.id);
        return;
      }
      const details = (r.body && r.body.error && r.body.error.details) || [];
      const left = [];
      details.forEach((d) => {
        // "PATH: message"; a missing property is reported at its object.
        const m = /^(\/[^:]*|\/): (.*)$/.exec(d);
        let path = m ? m[1] : null;
        const text = m ? m[2] : d;
        const req = /^"([^"]+)" is a required property/.exec(text);
        if (req && path !== null) { path = (path === "/" ? "" : path) + "/" + req[1].replace(/~/g, "~0").replace(/\//g, "~1"); }
        const slot = path !== null && fieldErrorFor(form, path);
        if (slot) { slot.textContent = text; } else { left.push(d); }
      });
      const message = r.body && r.body.error ? r.body.error.message : errorText(r.body);
      showError($("#form-error"), [message].concat(left).join("\n"));
    });
  }

  // ---- Editor ----------------------------------------------------------------------------------

  function wireEditor() {
    const doc = $("#doc");
    if (!doc) { return; }
    const gutter = $("#gutter");
    const diags = $("#diagnostics");
    const graph = $("#editor-graph");
    const graphState = $("#graph-state");
    let timer = null;
    let seq = 0;
    let errorLines = new Set();

    function drawGutter() {
      const n = doc.value.split("\n").length;
      const frag = document.createDocumentFragment();
      for (let i = 1; i <= n; i++) {
        const s = document.createElement("span");
        s.textContent = i + "\n";
        if (errorLines.has(i)) { s.className = "err"; }
        frag.appendChild(s);
      }
      gutter.replaceChildren(frag);
      gutter.scrollTop = doc.scrollTop;
    }

    async function check() {
      const mine = ++seq;
      let resp;
      try {
        resp = await fetch("/ui/editor/check", {
          method: "POST", credentials: "same-origin",
          headers: { "Content-Type": "text/plain" }, body: doc.value,
        });
      } catch (_) { return; }
      if (mine !== seq) { return; } // a newer check is on its way
      if (resp.status === 401) { window.location.href = "/ui/login?next=/ui/editor"; return; }
      const html = await resp.text();
      const fragment = new DOMParser().parseFromString(html, "text/html").body;
      const result = fragment.querySelector("#check");
      diags.replaceChildren(...fragment.childNodes);
      errorLines = new Set($$("li.diag[data-line]", diags).map((li) => Number(li.dataset.line)));
      drawGutter();
      const tpl = diags.querySelector("#check-graph");
      if (result && result.dataset.valid === "true" && tpl) {
        graph.replaceChildren(tpl.content.cloneNode(true));
        graphState.textContent = "";
        tpl.remove();
      } else {
        // The last good graph stays, marked as such.
        graphState.textContent = graph.childNodes.length ? " (last valid version of the text)" : "";
      }
      diags.dataset.checked = String(mine);
    }

    doc.addEventListener("input", () => {
      drawGutter();
      window.clearTimeout(timer);
      timer = window.setTimeout(check, 350);
    });
    doc.addEventListener("scroll", () => { gutter.scrollTop = doc.scrollTop; });
    doc.addEventListener("keydown", (ev) => {
      if (ev.key === "Tab") {
        ev.preventDefault();
        const s = doc.selectionStart;
        doc.setRangeText("  ", s, doc.selectionEnd, "end");
        doc.dispatchEvent(new Event("input"));
      }
    });
    diags.addEventListener("click", (ev) => {
      const a = ev.target.closest("a[data-line]");
      if (!a) { return; }
      ev.preventDefault();
      const lines = doc.value.split("\n");
      const line = Math.min(Number(a.dataset.line), lines.length);
      let at = 0;
      for (let i = 0; i < line - 1; i++) { at += lines[i].length + 1; }
      at += Math.max(0, Number(a.dataset.col) - 1);
      doc.focus();
      doc.setSelectionRange(at, at);
    });
    const save = $("#save");
    if (save) {
      save.addEventListener("click", async () => {
        save.disabled = true;
        const r = await api("POST", "/api/v1/definitions", doc.value, "application/yaml");
        save.disabled = false;
        const out = $("#save-result");
        if (r.status === 201 || r.status === 200) {
          const b = r.body;
          window.location.href = "/ui/workflows/" + encodeURIComponent(b.namespace) + "/" +
            encodeURIComponent(b.name) + "?version=" + encodeURIComponent(b.version);
        } else {
          showError(out, errorText(r.body));
        }
      });
    }
    drawGutter();
    check();
  }

  document.addEventListener("DOMContentLoaded", () => {
    wireActions();
    wireGraph();
    wireLive();
    wireRefresh();
    wireStart();
    wireEditor();
  });
})();
