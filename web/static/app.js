// The live dashboard: polls the JSON API every second, redraws, never reloads.
// Every text from the server (file names above all) goes through textContent:
// nothing a user drops in the folder can become markup or script here.
// console.js adds the operator's console (failed files, search, timelines, actions).
"use strict";

const POLL_MS = 1000;
let failures = 0;

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function fill(tableId, rows, render) {
  const body = document.querySelector(`#${tableId} tbody`);
  body.replaceChildren(...rows.map((r) => { const tr = document.createElement("tr"); render(tr, r); return tr; }));
}

function bar(row, percent) {
  const td = document.createElement("td");
  const outer = document.createElement("div");
  outer.className = "bar";
  const inner = document.createElement("div");
  inner.style.width = `${Math.max(0, Math.min(100, percent || 0))}%`;
  outer.appendChild(inner);
  td.appendChild(outer);
  td.title = percent === null || percent === undefined ? "" : `${percent}%`;
  row.appendChild(td);
}

function setText(id, text) { document.getElementById(id).textContent = text; }

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return i === 0 ? `${n} B` : `${n.toFixed(n < 10 ? 2 : 1)} ${units[i]}`;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 1) return `${(seconds * 1000).toFixed(seconds < 0.01 ? 2 : 0)} ms`;
  return age(seconds);
}

// A file name that opens its timeline (console.js) when clicked: by its exact bytes
// (ref) when the answer gave them, else by its shown name.
function fileLink(row, name, ref) {
  const td = document.createElement("td");
  td.className = "msg";
  const a = document.createElement("a");
  a.href = "#";
  a.textContent = name === null || name === undefined ? "" : String(name);
  a.addEventListener("click", (event) => { event.preventDefault(); if (window.openTimeline) openTimeline(name, ref); });
  td.appendChild(a);
  row.appendChild(td);
  return td;
}

// The bearer token, when the dashboard has one: asked once, kept for this tab only.
const TOKEN_KEY = "foldermill-token";
function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}
// Asked again only if the request that was refused carried the token we have now (an
// answer to a request sent before a new token was entered says nothing about it).
function askToken(sent) {
  if ((sent.Authorization || "") !== (authHeaders().Authorization || "")) return;
  document.getElementById("token-form").hidden = false;
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 90) return `${seconds.toFixed(1)} s`;
  if (seconds < 5400) return `${(seconds / 60).toFixed(1)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function drawChart(history) {
  const canvas = document.getElementById("chart");
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  const now = Math.floor(Date.now() / 1000);
  const perSecond = new Map(history.map(([s, files]) => [s, files]));
  const points = [];
  for (let s = now - 300; s <= now; s++) points.push(perSecond.get(s) || 0);
  const max = Math.max(1, ...points);
  ctx.strokeStyle = "#e5e7eb";
  ctx.beginPath(); ctx.moveTo(0, h - 1); ctx.lineTo(w, h - 1); ctx.stroke();
  ctx.strokeStyle = "#3b82f6";
  ctx.lineWidth = 2;
  ctx.beginPath();
  points.forEach((v, i) => {
    const x = (i / (points.length - 1)) * w, y = h - 4 - (v / max) * (h - 20);
    if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
  });
  ctx.stroke();
  ctx.fillStyle = "#667085";
  ctx.font = "12px system-ui";
  ctx.fillText(`max ${max} files/s`, 6, 14);
}

function renderStats(s) {
  setText("supervisor", s.supervisor ? `supervisor ${s.supervisor}` : "");
  const intake = document.getElementById("intake");
  const fault = s.machine_fault;
  intake.textContent = fault ? `intake paused: ${fault.kind.replace("_", " ")}` :
    s.intake_paused ? "intake paused" : "intake running";
  intake.className = s.intake_paused || fault ? "badge bad" : "badge";
  // A fault of the machine (a full disk...): said until it clears; intake resumes by itself.
  const banner = document.getElementById("fault");
  banner.hidden = !fault;
  banner.textContent = fault ? `Intake paused since ${new Date(fault.since * 1000).toLocaleTimeString()}: ` +
    `${fault.message}. No file is charged for it; intake resumes by itself when it clears.` : "";
  const writers = s.writers && s.writers.summary;
  setText("writers", writers ? `Writers are seen by: ${writers.join("; ")}.` : "");
  for (const f of ["unprocessed", "underprocess", "processed", "failed"]) {
    setText(`f-${f}`, s.folders && f in s.folders ? s.folders[f] : "–");
  }
  setText("oldest", age(s.oldest_unprocessed_age_s));
  const t = s.throughput && s.throughput["1m"];
  setText("rate", t ? t.files_per_s.toFixed(1) : "–");
  drawChart(s.history || []);
  fill("workers", s.workers || [], (tr, w) => {
    cell(tr, w.slot); cell(tr, w.pid); cell(tr, w.state); cell(tr, w.file, "msg");
    bar(tr, w.progress_percent); cell(tr, w.lines_done); cell(tr, bytes(w.rss));
    cell(tr, (w.cpu_percent || 0).toFixed(0)); cell(tr, w.files_done); cell(tr, w.restarts); cell(tr, age(w.uptime_s));
  });
  fill("nodes", Object.entries(s.nodes || {}), (tr, [key, n]) => {
    const cut = key.indexOf("/");
    cell(tr, cut < 0 ? "" : key.slice(0, cut)); cell(tr, cut < 0 ? key : key.slice(cut + 1)); cell(tr, n.lines_in); cell(tr, n.lines_out); cell(tr, n.errors);
    cell(tr, n.mean_us_per_line.toFixed(2));
  });
  setText("graph", (s.graph || []).join("\n"));
  if (window.drawGraph) drawGraph(s.graph_layout || [], s.nodes || {});
}

function renderTrace(t) {
  fill("recent", t.recent || [], (tr, f) => {
    fileLink(tr, f.file); cell(tr, f.pipeline || ""); cell(tr, f.outcome); cell(tr, f.lines); cell(tr, duration(f.seconds)); cell(tr, f.worker);
  });
}

function renderErrors(e) {
  fill("errors", (e.errors || []).slice(0, 20), (tr, x) => {
    cell(tr, new Date(x.time * 1000).toLocaleTimeString()); fileLink(tr, x.file); cell(tr, x.attempt);
    cell(tr, x.node); cell(tr, x.line); cell(tr, x.message, "msg");
  });
}

async function getJson(path) {
  const headers = authHeaders();
  const response = await fetch(path, { cache: "no-store", headers });
  if (response.status === 401) askToken(headers);
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

async function poll() {
  try {
    const [stats, trace, errors] = await Promise.all([getJson("/stats"), getJson("/trace"), getJson("/errors")]);
    renderStats(stats); renderTrace(trace); renderErrors(errors);
    failures = 0;
    const conn = document.getElementById("conn");
    conn.textContent = "live"; conn.className = "badge ok";
  } catch (err) {
    failures += 1;
    const conn = document.getElementById("conn");
    conn.textContent = "reconnecting…"; conn.className = "badge bad";
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
