// agora watch: the worlds table, the watched world's frames and rewards, the run's learning curve.
// Everything the page shows comes over one websocket (/ws) and, with a run, from /api/run. No external assets.
"use strict";

const state = { worlds: [], servers: [], watching: null, socket: null, run: false, curveTimer: null };
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) node.append(child);  // strings become text nodes: client names are never HTML
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
}

const fmt = (x, digits = 3) => (x === null || x === undefined ? "-" : Number(x).toPrecision(digits).replace(/\.?0+$/, ""));

// -- the socket --------------------------------------------------------------------------------------------------

function connect() {
  const socket = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  socket.binaryType = "arraybuffer";
  socket.onopen = () => {
    $("connection").textContent = "live";
    $("connection").classList.add("up");
    if (state.watching) socket.send(JSON.stringify({ watch: state.watching }));
  };
  socket.onclose = () => {
    $("connection").textContent = "reconnecting";
    $("connection").classList.remove("up");
    setTimeout(connect, 1000);
  };
  socket.onmessage = (event) => {
    if (typeof event.data === "string") onText(JSON.parse(event.data));
    else onFrame(event.data);
  };
  state.socket = socket;
}

function onText(message) {
  if (message.type === "worlds") {
    state.worlds = message.worlds;
    state.servers = message.servers;
    if (message.run && !state.run) startCurve();
    renderServers();
    renderWorlds();
    renderDetail();
  } else if (message.type === "frame_error" && message.key === state.watching) {
    $("frame-note").textContent = message.message;
  }
}

function watch(key) {
  state.watching = key;
  history.replaceState(null, "", key ? `#watch=${key}` : "#");
  const img = $("frame");
  img.removeAttribute("src");
  img.dataset.count = "0";
  img.dataset.hash = "";
  $("frame-note").textContent = key ? "waiting for the first frame..." : "";
  if (state.socket && state.socket.readyState === WebSocket.OPEN) state.socket.send(JSON.stringify({ watch: key }));
  renderWorlds();
  renderDetail();
}

// -- frames ------------------------------------------------------------------------------------------------------

function fnv1a(bytes) {
  let hash = 0x811c9dc5;
  for (let i = 0; i < bytes.length; i += 1) hash = Math.imul(hash ^ bytes[i], 0x01000193) >>> 0;
  return hash.toString(16);
}

function onFrame(buffer) {
  const view = new DataView(buffer);
  const length = view.getUint32(0);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, length)));
  if (header.key !== state.watching) return;
  const image = new Uint8Array(buffer, 4 + length);
  const img = $("frame");
  const old = img.src;
  img.src = URL.createObjectURL(new Blob([image], { type: `image/${header.format}` }));
  if (old.startsWith("blob:")) URL.revokeObjectURL(old);
  img.dataset.count = String(Number(img.dataset.count) + 1);
  img.dataset.hash = fnv1a(image);
  $("frame-note").textContent = `${header.width}x${header.height}, frame ${img.dataset.count}`;
}

// -- the table ---------------------------------------------------------------------------------------------------

function renderServers() {
  const list = $("servers");
  list.replaceChildren(
    ...state.servers.map((s) => {
      const rights = s.operator ? "operator" : "visible worlds only";
      const text = s.ok ? `${s.address} (${rights})` : `${s.address}: ${s.error || "connecting"}`;
      const item = el("li", { class: s.ok ? "up" : "down", title: s.error || "" }, text);
      if (s.ok && s.error) item.title = s.error;
      return item;
    }),
  );
}

function seatChip(seat) {
  const word = { held: "live", lost: "lost", free: "free" }[seat.state] || seat.state;
  const chip = el("span", { class: `seat ${seat.state}`, "data-agent": seat.agent, "data-state": seat.state }, `${seat.agent} `);
  chip.append(el("b", {}, seat.holder === null ? word : `${seat.holder} · ${word}`));
  chip.title = seat.holder === null ? `${seat.agent}: ${word}` : `${seat.agent} held by ${seat.holder} (agent, ${word})`;
  return chip;
}

function sparkline(values, width = 90, height = 22) {
  const box = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}` });
  if (values.length < 2) return box;
  const lo = Math.min(...values);
  const hi = Math.max(...values);
  const span = hi - lo || 1;
  const points = values.map((v, i) => `${(i / (values.length - 1)) * (width - 2) + 1},${height - 1 - ((v - lo) / span) * (height - 2)}`);
  box.append(svg("polyline", { class: "curve", points: points.join(" "), "stroke-width": 1.5 }));
  return box;
}

function renderWorlds() {
  const body = document.querySelector("#worlds tbody");
  const several = state.servers.length > 1;
  body.replaceChildren(
    ...state.worlds.map((w) => {
      const last = w.returns.length ? w.returns[w.returns.length - 1] : null;
      const returns = el("td", {}, el("span", { class: "num" }, fmt(last)), " ", sparkline(w.returns));
      const row = el(
        "tr",
        { "data-world": w.key, class: w.key === state.watching ? "watched" : "" },
        el("td", {}, several ? `${w.server}:${w.world}` : String(w.world)),
        el("td", {}, w.scenario),
        el("td", { class: "seats" }, ...w.seats.map(seatChip)),
        el("td", { class: "num" }, w.observers === null ? "-" : String(w.observers)),
        el("td", { class: "num tick" }, String(w.tick)),
        el("td", { class: "num" }, String(w.episode)),
        el("td", { class: "num" }, w.steps_per_s === null ? "-" : w.steps_per_s.toFixed(1)),
        el("td", { class: "num" }, w.late === null ? "-" : String(w.late)),
        returns,
      );
      row.addEventListener("click", () => watch(w.key === state.watching ? null : w.key));
      return row;
    }),
  );
  $("world-count").textContent = `(${state.worlds.length})`;
  $("no-worlds").hidden = state.worlds.length > 0;
}

// -- the watched world -------------------------------------------------------------------------------------------

function renderDetail() {
  const world = state.worlds.find((w) => w.key === state.watching);
  $("detail").hidden = !state.watching;
  if (!state.watching) return;
  if (!world) {
    $("detail-title").textContent = `world ${state.watching} (not listed)`;
    return;
  }
  $("detail-title").textContent = `world ${world.world}: ${world.scenario}, episode ${world.episode}, tick ${world.tick}`;
  if (world.render === false) $("frame-note").textContent = "this world was not created with render=True: no frames";
  const rewards = Object.entries(world.rewards);
  const scale = Math.max(1e-9, ...rewards.map(([, r]) => Math.abs(r)));
  $("rewards").replaceChildren(
    ...(rewards.length
      ? rewards.map(([agent, r]) => {
          const fill = el("div", { class: `fill ${r < 0 ? "neg" : "pos"}` });
          const half = (Math.abs(r) / scale) * 50;
          fill.style.left = `${r < 0 ? 50 - half : 50}%`;
          fill.style.width = `${half}%`;
          return el("div", { class: "bar", "data-agent": agent }, el("span", {}, agent), el("div", { class: "track" }, fill), el("span", { class: "num" }, fmt(r)));
        })
      : [el("p", { class: "muted" }, "no step yet")]),
  );
  $("returns").replaceChildren(
    world.returns.length ? sparkline(world.returns, 300, 60) : el("p", { class: "muted" }, "no episode finished yet"),
    el("p", { class: "muted" }, world.returns.map((r) => fmt(r)).join("  ")),
  );
}

// -- the learning curve ------------------------------------------------------------------------------------------

function startCurve() {
  state.run = true;
  $("curve-panel").hidden = false;
  const load = () => fetch("/api/run").then((r) => r.json()).then(drawCurve).catch(() => {});
  load();
  state.curveTimer = setInterval(load, 5000);
}

function drawCurve(curve) {
  $("curve-run").textContent = `${curve.run}${curve.column ? `: ${curve.column} over steps` : ""}`;
  const width = 720;
  const height = 220;
  const pad = { left: 56, right: 12, top: 10, bottom: 28 };
  const box = svg("svg", { id: "curve-svg", viewBox: `0 0 ${width} ${height}`, width: "100%", "data-points": curve.points.length });
  box.style.maxWidth = `${width}px`;
  if (!curve.points.length) {
    const note = svg("text", { x: pad.left, y: height / 2 });
    note.textContent = "no update logged yet";
    box.append(note);
    $("curve").replaceChildren(box);
    return;
  }
  const xs = curve.points.map((p) => p[0]);
  const ys = curve.points.map((p) => p[1]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs) || 1];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (y0 === y1) [y0, y1] = [y0 - 1, y1 + 1];
  const sx = (x) => pad.left + ((x - x0) / (x1 - x0 || 1)) * (width - pad.left - pad.right);
  const sy = (y) => height - pad.bottom - ((y - y0) / (y1 - y0)) * (height - pad.top - pad.bottom);
  box.append(svg("line", { class: "axis", x1: pad.left, y1: height - pad.bottom, x2: width - pad.right, y2: height - pad.bottom }));
  box.append(svg("line", { class: "axis", x1: pad.left, y1: pad.top, x2: pad.left, y2: height - pad.bottom }));
  const label = (text, x, y, anchor) => {
    const t = svg("text", { x, y, "text-anchor": anchor });
    t.textContent = text;
    box.append(t);
  };
  label(fmt(y1), pad.left - 6, pad.top + 8, "end");
  label(fmt(y0), pad.left - 6, height - pad.bottom, "end");
  label(fmt(x0), pad.left, height - 8, "start");
  label(`${fmt(x1)} steps`, width - pad.right, height - 8, "end");
  box.append(svg("polyline", { class: "curve", points: curve.points.map((p) => `${sx(p[0])},${sy(p[1])}`).join(" ") }));
  $("curve").replaceChildren(box);
}

// -- start -------------------------------------------------------------------------------------------------------

const fromHash = /^#watch=(\d+:\d+)$/.exec(location.hash);
if (fromHash) watch(fromHash[1]);
connect();
