// The operators' console: plain JavaScript over the query API's admin routes
// (no build step, no dependency). The token stays in this tab's session storage.
"use strict";

const $ = (id) => document.getElementById(id);
const pages = ["sign-in", "projections", "dead-letters", "streams", "story", "live"];
let timer = null;

function token() {
  return sessionStorage.getItem("token");
}

async function api(method, path, body) {
  const headers = { Authorization: "Bearer " + token() };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (response.status === 401) {
    signOut("The token was refused (401): sign in again.");
    throw new Error("unauthorized");
  }
  const text = await response.text();
  const value = text ? JSON.parse(text) : null;
  if (!response.ok) {
    const problem = value && (value.detail || value.title);
    throw new Error(`${method} ${path}: ${response.status} ${problem || ""}`);
  }
  return value;
}

function showError(error) {
  $("error").textContent = error ? String(error.message || error) : "";
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function button(label, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.addEventListener("click", onClick);
  return b;
}

function show(page) {
  clearInterval(timer);
  timer = null;
  showError(null);
  for (const p of pages) $(p).hidden = p !== page;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("current", a.dataset.page === page);
}

// ---- sign in ----
async function signIn(event) {
  event.preventDefault();
  const candidate = $("token").value.trim();
  sessionStorage.setItem("token", candidate);
  try {
    await api("GET", "/v1/admin/projections");
    $("sign-in-error").textContent = "";
    $("nav").hidden = false;
    location.hash = "#/projections";
    route();
  } catch (error) {
    sessionStorage.removeItem("token");
    $("sign-in-error").textContent = error.message === "unauthorized" ? "That token is not valid." : String(error.message);
  }
}

function signOut(reason) {
  sessionStorage.removeItem("token");
  $("nav").hidden = true;
  show("sign-in");
  $("sign-in-error").textContent = reason || "";
}

// ---- projections ----
const lastProcessed = {};

async function loadProjections() {
  const { projections } = await api("GET", "/v1/admin/projections");
  const now = Date.now();
  const rows = $("projection-rows");
  rows.replaceChildren();
  for (const p of projections) {
    const tr = document.createElement("tr");
    tr.dataset.name = p.name;
    cell(tr, p.name);
    cell(tr, p.state, "state-" + p.state);
    cell(tr, p.checkpoint, "number");
    cell(tr, p.head, "number");
    cell(tr, p.lag, "number");
    cell(tr, p.lag_seconds.toFixed(1), "number");
    cell(tr, p.held_back_events, "number");
    const before = lastProcessed[p.name];
    const rate = before ? ((p.events_processed - before.n) * 1000) / Math.max(1, now - before.at) : null;
    lastProcessed[p.name] = { n: p.events_processed, at: now };
    cell(tr, rate === null ? "" : rate.toFixed(1), "number");
    const rebuild = cell(tr, "", "rebuild");
    if (p.rebuild) {
      const r = p.rebuild;
      rebuild.textContent = r.state;
      rebuild.dataset.state = r.state;
      if (r.state === "running" && r.events_total > 0) {
        const bar = document.createElement("progress");
        bar.max = r.events_total;
        bar.value = r.events_done;
        rebuild.append(" ", bar, ` ${r.events_done}/${r.events_total}`);
        if (r.eta_seconds !== null) rebuild.append(` ETA ${Math.ceil(r.eta_seconds)} s`);
      }
      if (r.error) rebuild.title = r.error;
    }
    const actions = cell(tr, "");
    actions.appendChild(
      button("Rebuild", async () => {
        try {
          await api("POST", `/v1/admin/projections/${encodeURIComponent(p.name)}/rebuild`);
          await loadProjections();
        } catch (error) {
          showError(error);
        }
      })
    );
    rows.appendChild(tr);
  }
}

// ---- dead letters ----
let openLetter = null;

async function loadDeadLetters() {
  const items = [];
  let after = 0;
  for (let page = 0; page < 5; page++) {
    const answer = await api("GET", `/v1/admin/dead-letters?limit=200&after=${after}`);
    items.push(...answer.items);
    if (answer.next === null) break;
    after = answer.next;
  }
  $("dead-letters-count").textContent = `${items.length} dead letter(s)`;
  const rows = $("dead-letter-rows");
  rows.replaceChildren();
  for (const letter of items) {
    const tr = document.createElement("tr");
    tr.className = "clickable";
    tr.dataset.sequence = letter.sequence;
    cell(tr, letter.sequence, "number");
    cell(tr, letter.time);
    cell(tr, letter.consumer);
    cell(tr, letter.subject);
    cell(tr, letter.error);
    cell(tr, letter.deliveries, "number");
    cell(tr, "").appendChild(button("Inspect", () => inspect(letter.sequence)));
    rows.appendChild(tr);
  }
  if (openLetter !== null && !items.some((l) => l.sequence === openLetter)) {
    $("dead-letter-detail").hidden = true;
    openLetter = null;
  }
}

async function inspect(sequence) {
  const letter = await api("GET", `/v1/admin/dead-letters/${sequence}`);
  openLetter = sequence;
  $("dead-letter-sequence").textContent = sequence;
  $("dead-letter-body").textContent = JSON.stringify(
    { headers: letter.headers, body: letter.body ?? letter.body_base64 },
    null,
    2
  );
  $("dead-letter-detail").hidden = false;
}

async function actOnLetter(action) {
  if (openLetter === null) return;
  try {
    if (action === "replay") await api("POST", `/v1/admin/dead-letters/${openLetter}/replay`);
    else await api("DELETE", `/v1/admin/dead-letters/${openLetter}`);
    await loadDeadLetters();
  } catch (error) {
    showError(error);
  }
}

// ---- streams ----
let streamNext = null;

async function openStream(event) {
  if (event) event.preventDefault();
  $("stream-rows").replaceChildren();
  streamNext = 1;
  await moreOfStream();
}

async function moreOfStream() {
  const stream = $("stream-id").value.trim();
  const page = await api("GET", `/v1/admin/streams/${encodeURIComponent(stream)}/events?from_version=${streamNext}&limit=100`);
  for (const e of page.events) {
    const tr = document.createElement("tr");
    cell(tr, e.version, "number");
    cell(tr, e.position, "number");
    cell(tr, e.type);
    cell(tr, e.recorded_at);
    cell(tr, e.correlation_id);
    cell(tr, e.actor);
    cell(tr, "").appendChild(button("State here", () => stateAt(stream, e.version)));
    $("stream-rows").appendChild(tr);
  }
  streamNext = page.next_version;
  $("stream-more").hidden = streamNext === null;
}

async function stateAt(stream, version) {
  const answer = await api("GET", `/v1/admin/streams/${encodeURIComponent(stream)}/state?version=${version}`);
  $("state-title").hidden = false;
  $("state-version").textContent = answer.version;
  $("stream-state").textContent = JSON.stringify(answer.state, null, 2);
}

// ---- story ----
async function tellStory(event) {
  if (event) event.preventDefault();
  const order = $("story-order").value.trim();
  const story = await api("GET", `/v1/admin/orders/${encodeURIComponent(order)}/story`);
  $("story-correlations").textContent = "correlation ids: " + story.correlation_ids.join(", ");
  const list = $("story-steps");
  list.replaceChildren();
  for (const step of story.steps) {
    const li = document.createElement("li");
    li.dataset.type = step.type;
    li.textContent = `${step.type} in ${step.stream_id} v${step.version} by ${step.actor}`;
    const gap = document.createElement("span");
    gap.className = "gap";
    gap.textContent = `+${step.since_previous_ms} ms (${step.since_start_ms} ms in)`;
    li.appendChild(gap);
    list.appendChild(li);
  }
  const letters = $("story-dead-letters");
  letters.textContent = story.dead_letters.length
    ? `Dead letters: ${story.dead_letters.map((l) => `#${l.sequence} ${l.consumer}: ${l.error}`).join("; ")}`
    : story.dead_letters_unavailable
      ? "Dead letters: NATS did not answer."
      : "No dead letters.";
}

// ---- live chart ----
const samples = [];

async function sample() {
  const { projections } = await api("GET", "/v1/admin/projections");
  samples.push({ at: Date.now(), projections });
  while (samples.length > 120) samples.shift();
  draw();
}

function draw() {
  const canvas = $("chart");
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, canvas.width, canvas.height);
  if (samples.length < 2) return;
  const names = samples[samples.length - 1].projections.map((p) => p.name);
  const series = [];
  for (const name of names) {
    const rate = [];
    const lag = [];
    for (let i = 1; i < samples.length; i++) {
      const a = samples[i - 1].projections.find((p) => p.name === name);
      const b = samples[i].projections.find((p) => p.name === name);
      if (!a || !b) continue;
      rate.push(((b.events_processed - a.events_processed) * 1000) / Math.max(1, samples[i].at - samples[i - 1].at));
      lag.push(b.lag);
    }
    series.push({ label: `${name} events/s`, points: rate, dash: [] });
    series.push({ label: `${name} lag`, points: lag, dash: [4, 4] });
  }
  const max = Math.max(1, ...series.flatMap((s) => s.points));
  // The zero line, and the top's value.
  g.setLineDash([]);
  g.strokeStyle = "#d0d7de";
  g.beginPath();
  g.moveTo(10, canvas.height - 10);
  g.lineTo(canvas.width - 10, canvas.height - 10);
  g.stroke();
  g.fillStyle = "#57606a";
  g.fillText(max.toFixed(1), 12, 14);
  const colors = ["#0969da", "#1a7f37", "#bf3989", "#9a6700", "#8250df", "#cf222e"];
  const legend = [];
  series.forEach((s, i) => {
    const color = colors[Math.floor(i / 2) % colors.length];
    g.strokeStyle = color;
    g.setLineDash(s.dash);
    g.beginPath();
    s.points.forEach((v, x) => {
      const px = (x / Math.max(1, s.points.length - 1)) * (canvas.width - 20) + 10;
      const py = canvas.height - 10 - (v / max) * (canvas.height - 20);
      if (x === 0) g.moveTo(px, py);
      else g.lineTo(px, py);
    });
    g.stroke();
    g.fillStyle = color;
    s.points.forEach((v, x) => {
      const px = (x / Math.max(1, s.points.length - 1)) * (canvas.width - 20) + 10;
      const py = canvas.height - 10 - (v / max) * (canvas.height - 20);
      g.fillRect(px - 2, py - 2, 4, 4);
    });
    legend.push(`${s.label} (${color}${s.dash.length ? ", dashed" : ""}): ${s.points[s.points.length - 1]?.toFixed?.(1) ?? ""}`);
  });
  $("chart-legend").textContent = `max ${max.toFixed(1)}. ` + legend.join(" · ");
}

// ---- routing ----
function every(ms, task) {
  const run = () => task().catch(showError);
  run();
  timer = setInterval(run, ms);
}

function route() {
  if (!token()) return show("sign-in");
  $("nav").hidden = false;
  const page = (location.hash.replace(/^#\//, "") || "projections").split("?")[0];
  if (!pages.includes(page) || page === "sign-in") return (location.hash = "#/projections");
  show(page);
  if (page === "projections") every(1000, loadProjections);
  if (page === "dead-letters") loadDeadLetters().catch(showError);
  if (page === "live") every(2000, sample);
}

$("sign-in-form").addEventListener("submit", signIn);
$("sign-out").addEventListener("click", () => signOut(""));
$("dead-letters-refresh").addEventListener("click", () => loadDeadLetters().catch(showError));
$("dead-letter-replay").addEventListener("click", () => actOnLetter("replay"));
$("dead-letter-discard").addEventListener("click", () => actOnLetter("discard"));
$("stream-form").addEventListener("submit", (e) => openStream(e).catch(showError));
$("stream-more").addEventListener("click", () => moreOfStream().catch(showError));
$("story-form").addEventListener("submit", (e) => tellStory(e).catch(showError));
window.addEventListener("hashchange", route);
route();
