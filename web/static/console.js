// The operator's console on the dashboard: the failed files and the actions on them,
// pause and resume, search and a file's timeline, output previews, replay, the routing
// graph drawn as SVG, the audit log. Uses app.js's helpers. Every action is a POST with
// the X-Foldermill-Action header (and the token, when there is one); every text from
// the server goes through textContent.
"use strict";

const CONSOLE_POLL_MS = 2000;
const FAILED_PAGE = 25;
let failedOffset = 0;
let failedTotal = 0;
let failedSet = "";
let intakePaused = false;
let timelineName = null;
let lastNodes = null;

function notice(text, bad) {
  const el = document.getElementById("notice");
  el.textContent = text;
  el.className = bad ? "notice bad" : "notice";
}

async function act(path, body) {
  const token = authHeaders();
  const headers = { "X-Foldermill-Action": "1", ...token };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method: "POST", headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (err) {
    notice(`${path}: the dashboard did not answer`, true);
    return null;
  }
  const answer = await response.json().catch(() => ({}));
  if (response.status === 401) askToken(token);
  if (!response.ok) { notice(answer.error || `HTTP ${response.status}`, true); return null; }
  notice(`${answer.action || answer.intake || "done"}${answer.file ? ": " + answer.file : ""}` +
         `${answer.count !== undefined ? ` (${answer.count} files)` : ""}`, false);
  setTimeout(refreshConsole, 300);
  return answer;
}

function button(row, label, onClick) {
  const td = document.createElement("td");
  const b = document.createElement("button");
  b.type = "button";
  b.className = "small";
  b.textContent = label;
  b.addEventListener("click", onClick);
  td.appendChild(b);
  row.appendChild(td);
  return b;
}

function when(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleString() : "–";
}

// -- failed files --------------------------------------------------------------------------

function renderFailed(page) {
  failedTotal = page.total;
  failedSet = page.set;
  setText("failed-total", `(${page.total})`);
  const last = Math.min(page.offset + page.files.length, page.total);
  setText("failed-page", page.total ? `${page.offset + 1}–${last} of ${page.total}` : "none");
  document.getElementById("retry-all").textContent = `retry all (${page.total})`;
  const selected = new Set([...document.querySelectorAll("#failed tbody input:checked")].map((c) => c.value));
  fill("failed", page.files, (tr, f) => {
    const td = document.createElement("td");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = f.ref;
    box.checked = selected.has(f.ref);
    box.setAttribute("aria-label", `select ${f.name}`);
    td.appendChild(box);
    tr.appendChild(td);
    fileLink(tr, f.name, f.ref);
    cell(tr, f.reason, "msg");
    cell(tr, f.attempts);
    cell(tr, when(f.failed_at));
    const actions = document.createElement("td");
    tr.appendChild(actions);
    for (const [label, verb] of [["retry", "retry"], ["discard", "discard"]]) {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "small";
      b.textContent = label;
      b.dataset.action = verb;
      b.addEventListener("click", () => {
        if (verb === "discard" && !confirm(`Discard ${f.name}? It moves to discarded/ (nothing is deleted).`)) return;
        act(`/failed/${f.ref}/${verb}`);
      });
      actions.appendChild(b);
    }
  });
}

async function refreshFailed() {
  const page = await getJson(`/failed?offset=${failedOffset}&limit=${FAILED_PAGE}`);
  if (page.files.length === 0 && failedOffset > 0) { failedOffset = 0; return refreshFailed(); }
  renderFailed(page);
}

document.getElementById("retry-all").addEventListener("click", () => {
  const count = failedTotal, set = failedSet;
  if (!count) { notice("nothing in failed/", false); return; }
  if (!confirm(`Retry all ${count} failed files with fresh attempts?`)) return;
  act("/failed/retry-all", { count, set });
});

document.getElementById("discard-selected").addEventListener("click", async () => {
  const refs = [...document.querySelectorAll("#failed tbody input:checked")].map((c) => c.value);
  if (!refs.length) { notice("select the files to discard first", true); return; }
  if (!confirm(`Discard ${refs.length} selected files? They move to discarded/ (nothing is deleted).`)) return;
  for (const ref of refs) await act(`/failed/${ref}/discard`);
});

document.getElementById("failed-all").addEventListener("change", (event) => {
  for (const box of document.querySelectorAll("#failed tbody input[type=checkbox]")) box.checked = event.target.checked;
});
document.getElementById("failed-prev").addEventListener("click", () => {
  failedOffset = Math.max(0, failedOffset - FAILED_PAGE); refreshFailed().catch(() => {});
});
document.getElementById("failed-next").addEventListener("click", () => {
  if (failedOffset + FAILED_PAGE < failedTotal) failedOffset += FAILED_PAGE;
  refreshFailed().catch(() => {});
});

// -- intake --------------------------------------------------------------------------------

function showIntake(paused) {
  intakePaused = paused;
  document.getElementById("intake-toggle").textContent = paused ? "resume intake" : "pause intake";
}

document.getElementById("intake-toggle").addEventListener("click", async () => {
  const answer = await act(intakePaused ? "/intake/resume" : "/intake/pause");
  if (answer) showIntake(answer.intake === "paused");
});

// -- search and timeline -------------------------------------------------------------------

document.getElementById("search-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const q = document.getElementById("search").value;
  if (!q) return;
  try {
    const found = await getJson(`/files?q=${encodeURIComponent(q)}`);
    fill("search-results", found.files, (tr, f) => {
      fileLink(tr, f.name, f.ref); cell(tr, f.final, "msg"); cell(tr, f.status); cell(tr, f.attempts); cell(tr, when(f.updated));
    });
    if (!found.files.length) notice(`no file name contains ${q}`, false);
  } catch (err) {
    notice(`search failed: ${err.message}`, true);
  }
});

// A file in a URL: its exact bytes (ref), or its shown name marked as such (?shown=1):
// a name and a shown name can be two different files. Either is one part of the URL: a
// file in a directory has its "/" as %2F (acme%2F2026-12%2Fx.csv), so that an output's
// part after "/outputs/" is never mistaken for a directory of the name.
function fileUrl(path, name, ref, rest) {
  return ref ? `${path}/${ref}${rest || ""}` : `${path}/${encodeURIComponent(name)}${rest || ""}?shown=1`;
}
let timelineRef = null;

function details(e) {
  const skip = new Set(["ts", "event", "file", "attempt", "worker", "seconds", "supervisor", "output"]);
  const parts = Object.entries(e).filter(([k]) => !skip.has(k)).map(([k, v]) => `${k}=${Array.isArray(v) ? v.join(", ") : v}`);
  if (e.output) parts.push(`outputs: ${e.output.join(", ")}`);
  return parts.join("  ");
}

async function openTimeline(name, ref) {
  timelineName = name;
  timelineRef = ref || null;
  const panel = document.getElementById("timeline-panel");
  panel.hidden = false;
  setText("timeline-file", name);
  document.getElementById("preview").hidden = true;
  let t;
  try {
    t = await getJson(fileUrl("/files", name, ref));
    if (timelineName !== name) return;  // another file was opened meanwhile
  } catch (err) {
    if (timelineName !== name) return;
    fill("timeline", [], () => {});
    fill("outputs", [], () => {});
    notice(`no journal entry for ${name}`, true);
    return;
  }
  fill("timeline", t.entries, (tr, e) => {
    cell(tr, e.ts); cell(tr, e.event); cell(tr, e.attempt); cell(tr, e.worker);
    cell(tr, e.seconds === undefined ? "" : duration(e.seconds)); cell(tr, details(e), "msg");
  });
  fill("outputs", t.outputs, (tr, o) => {
    cell(tr, o.name, "msg"); cell(tr, bytes(o.bytes));
    button(tr, "preview", () => preview(name, t.ref, o));
  });
  const last = t.entries[t.entries.length - 1];
  const replay = document.getElementById("replay");
  replay.hidden = !(last && last.event === "processed");
  replay.dataset.file = t.final || "";
  replay.dataset.ref = t.final_ref || "";
  timelineRef = t.ref;
  panel.scrollIntoView({ block: "nearest" });
}
window.openTimeline = openTimeline;

async function preview(name, ref, output) {
  const pre = document.getElementById("preview");
  const response = await fetch(fileUrl("/files", name, ref, `/outputs/${output.ref}`), { headers: authHeaders() });
  const text = response.ok ? await response.text() : `cannot preview ${output.name}: HTTP ${response.status}`;
  if (timelineName !== name) return;  // another file was opened meanwhile
  pre.hidden = false;
  pre.textContent = text;
}

document.getElementById("replay").addEventListener("click", async () => {
  const { file, ref } = document.getElementById("replay").dataset;
  if (!file || !confirm(`Process ${file} again with the current pipeline? Its new outputs get new names.`)) return;
  const answer = await act(`/processed/${ref}/replay`);
  if (answer) setTimeout(() => openTimeline(timelineName, timelineRef), 1500);
});

// -- the routing graph ---------------------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

// One drawing per pipeline, stacked: columns by distance from "start"; each node shows
// its processor and lines/s. Node figures are keyed "pipeline/tag".
function drawGraph(pipelines, nodes) {
  const root = document.getElementById("graph-svg");
  const now = Date.now() / 1000;
  const rates = {};
  if (lastNodes) {
    const dt = Math.max(0.001, now - lastNodes.at);
    for (const [key, n] of Object.entries(nodes)) {
      const before = lastNodes.nodes[key];
      rates[key] = before ? Math.max(0, (n.lines_in - before.lines_in) / dt) : 0;
    }
  }
  lastNodes = { at: now, nodes };
  const W = 170, H = 54, GAP_X = 60, GAP_Y = 18, LABEL = 22;
  const defs = svg("defs", {});
  const marker = svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 6, markerHeight: 6, orient: "auto" });
  marker.appendChild(svg("path", { d: "M0,0 L10,5 L0,10 z", fill: "#667085" }));
  defs.appendChild(marker);
  const parts = [defs];
  let top = 0, width = 0;
  for (const pipeline of pipelines) {
    const layout = pipeline.nodes || [];
    const tags = layout.map((n) => n.tag);
    const depth = { [tags[0]]: 0 };
    const queue = tags.length ? [tags[0]] : [];
    while (queue.length) {
      const tag = queue.shift();
      const node = layout.find((n) => n.tag === tag);
      for (const next of (node && node.emits) || []) {
        if (next in depth || !tags.includes(next)) continue;
        depth[next] = depth[tag] + 1;
        queue.push(next);
      }
    }
    let deepest = Math.max(0, ...Object.values(depth));
    for (const tag of tags) if (!(tag in depth)) depth[tag] = ++deepest;
    const columns = {};
    for (const tag of tags) (columns[depth[tag]] = columns[depth[tag]] || []).push(tag);
    const y0 = top + LABEL;
    const pos = {};
    for (const [col, members] of Object.entries(columns)) {
      members.forEach((tag, i) => { pos[tag] = { x: 10 + col * (W + GAP_X), y: y0 + 10 + i * (H + GAP_Y) }; });
    }
    const endX = 10 + (deepest + 1) * (W + GAP_X);
    pos.end = { x: endX, y: y0 + 10 };
    parts.push(svg("text", { x: 10, y: top + 16, class: "pipeline" },
      `pipeline ${pipeline.pipeline}${pipeline.format === "csv" ? " (CSV records)" : ""}`));
    for (const node of layout) {
      for (const next of node.emits || []) {
        const a = pos[node.tag], b = pos[next];
        if (!a || !b) continue;
        const back = b.x <= a.x;
        parts.push(svg("path", {
          d: back ? `M${a.x + W / 2},${a.y + H} C${a.x + W / 2},${a.y + H + 40} ${b.x + W / 2},${b.y + H + 40} ${b.x + W / 2},${b.y + H}`
                  : `M${a.x + W},${a.y + H / 2} L${b.x},${b.y + (next === "end" ? 17 : H / 2)}`,
          class: "edge", "marker-end": "url(#arrow)",
        }));
      }
    }
    for (const node of layout) {
      const p = pos[node.tag];
      const g = svg("g", { class: "node", transform: `translate(${p.x},${p.y})` });
      g.appendChild(svg("rect", { width: W, height: H, rx: 6 }));
      g.appendChild(svg("text", { x: 8, y: 17, class: "tag" }, node.tag));
      g.appendChild(svg("text", { x: 8, y: 33 }, node.processor + (node.side ? ` → <name>.${node.side}` : "")));
      const rate = rates[`${pipeline.pipeline}/${node.tag}`];
      g.appendChild(svg("text", { x: 8, y: 48, class: "rate" }, rate === undefined ? "– lines/s" : `${rate.toFixed(rate < 10 ? 1 : 0)} lines/s`));
      parts.push(g);
    }
    const end = svg("g", { class: "node end", transform: `translate(${pos.end.x},${pos.end.y})` });
    end.appendChild(svg("rect", { width: 80, height: 34, rx: 17 }));
    end.appendChild(svg("text", { x: 14, y: 21 }, "output/"));
    parts.push(end);
    top = y0 + 20 + Math.max(1, ...Object.values(columns).map((m) => m.length)) * (H + GAP_Y);
    width = Math.max(width, endX + 90);
  }
  root.setAttribute("viewBox", `0 0 ${Math.max(width, 100)} ${Math.max(top, 20)}`);
  root.setAttribute("height", String(Math.max(top, 20)));
  root.replaceChildren(...parts);
}
window.drawGraph = drawGraph;

// -- audit log -----------------------------------------------------------------------------

async function refreshAudit() {
  const audit = await getJson("/audit?limit=20");
  fill("audit", audit.entries, (tr, e) => {
    cell(tr, e.time); cell(tr, e.action); cell(tr, (e.targets || []).slice(0, 5).join(", ") +
      ((e.targets || []).length > 5 ? ` and ${e.targets.length - 5} more` : ""), "msg");
    cell(tr, e.outcome, "msg"); cell(tr, e.auth); cell(tr, e.remote);
  });
}

// -- the token -----------------------------------------------------------------------------

document.getElementById("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value);
  document.getElementById("token").value = "";
  document.getElementById("token-form").hidden = true;
  notice("token kept for this tab", false);
  refreshConsole();
});

async function refreshConsole() {
  try {
    const stats = await getJson("/stats");
    showIntake(Boolean(stats.intake_paused));
    await Promise.all([refreshFailed(), refreshAudit()]);
  } catch (err) {
    // app.js shows the connection's state; the console tries again at the next tick
  }
}

async function consoleLoop() {
  await refreshConsole();
  setTimeout(consoleLoop, CONSOLE_POLL_MS);
}

consoleLoop();
