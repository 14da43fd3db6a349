// fedpoint annotation page: plain JavaScript, canvas rendering, nothing loaded from elsewhere.
// Image pixels arrive as float32 rows (window/level is applied here, so CT keeps its HU);
// masks arrive as bit-packed rows. Points sent to the service are image indices [x, y(, z)].
"use strict";

const $ = (id) => document.getElementById(id);
const viewer = $("viewer");
const canvas = $("canvas");
const ctx = canvas.getContext("2d");
const USER_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

const S = {
  token: null,
  user: "web",
  images: [],
  meta: null,          // the open image: id, shape, slices, window, range, presets, flip_y, per_slice
  views: 0,            // view fetches and edits sent so far: a view older than an edit is not shown
  slice: 0,
  pixels: new Map(),   // slice -> Float32Array (rows top first)
  mask: null,          // Uint8Array, width * height
  area: 0,
  clicks: [],          // [{point: [x, y(, z)], positive}]
  box: null,           // the session's box: {lo: [x, y(, z)], hi: [...]} (first and last pixel), or null
  width: 0, height: 0,
  win: 1, lev: 0.5,
  opacity: 0.45, overlayOn: true,
  view: { s: 1, ox: 0, oy: 0 },
  queue: Promise.resolve(),
  pending: 0,
  accepted: 0,
  structures: [],      // [{name, value, color}] from /api/status
  structure: null,     // the structure being annotated (its own session per image)
  named: false,        // the token is a named user's: the page cannot rename them
  route: null,         // a volume's route: "propagate" (one 3D mask, /api/volumes), "slice" or "3d" (/api/sessions)
  routes: [],          // the routes the site's base runs for a volume, its default first
  maskSlices: [],      // slices the volume's mask holds; userSlices: those the user worked on
  userSlices: [],
};
const imageLayer = document.createElement("canvas");
const maskLayer = document.createElement("canvas");

// ------------------------------------------------------------------------------------- API
async function api(path, { method = "GET", json, raw = false } = {}) {
  const headers = { Authorization: `Bearer ${S.token}`, "X-Fedpoint-User": S.user };
  const init = { method, headers };
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (err) {
    setConnection(false);
    throw new Error("The service cannot be reached");
  }
  setConnection(true);
  if (res.status === 401) {
    askToken("The access token was refused.");
    throw new Error("The access token was refused");
  }
  if (!res.ok) {
    let detail = `${res.status} ${res.statusText}`;
    try { detail = (await res.json()).detail || detail; } catch (_) { /* not JSON */ }
    throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
  }
  return raw ? res : res.json();
}

function setConnection(ok) {
  $("conn-dot").className = "dot " + (ok ? "ok" : "down");
}

// ------------------------------------------------------------------------------------- feedback
let toastTimer = null;
function toast(text, isError = false) {
  const el = $("toast");
  el.textContent = text;
  el.className = "toast" + (isError ? " error" : "");
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.hidden = true; }, isError ? 5000 : 2500);
}

function logLine(html) {
  const li = document.createElement("li");
  const time = new Date().toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  li.innerHTML = `<span class="mono">${time}</span> ${html}`;
  const log = $("log");
  log.prepend(li);
  while (log.children.length > 6) log.lastChild.remove();
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

// ------------------------------------------------------------------------------------- token
function askToken(message = "") {
  $("token-error").textContent = message;
  const dialog = $("token-dialog");
  if (!dialog.open) dialog.showModal();
}

$("token-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  S.token = $("token-input").value.trim();
  try {
    await api("/api/status");
    sessionStorage.setItem("fedpoint.token", S.token);
    $("token-dialog").close();
    start();
  } catch (err) {
    $("token-error").textContent = err.message;
  }
});

function readToken() {
  const match = location.hash.match(/token=([^&]+)/);
  if (match) {
    sessionStorage.setItem("fedpoint.token", decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname);  // keep the token out of the address bar
  }
  return sessionStorage.getItem("fedpoint.token");
}

// ------------------------------------------------------------------------------------- status
async function refreshStatus() {
  let st;
  try { st = await api("/api/status"); } catch (_) { return; }
  $("site-name").textContent = st.site;
  $("site-modality").textContent = st.modality;
  document.title = `fedpoint · ${st.site}`;
  const a = (st.adapters && S.structure && st.adapters[S.structure]) || st.adapter;  // the structure being labelled
  $("st-adapter").textContent = `${a.kind} v${a.saved_version} · ${a.online_steps} step${a.online_steps === 1 ? "" : "s"}`;
  $("st-cache").textContent = `${st.cache.cases} case${st.cache.cases === 1 ? "" : "s"}`;
  const ep = $("st-episode");
  const last = st.last_episode;
  if (st.training.status === "RUNNING") {
    ep.textContent = "running…"; ep.className = "chip-value";
  } else if (last) {
    const best = last.val_scores && last.val_scores.length ? Math.max(...last.val_scores) : last.baseline;
    ep.textContent = `#${last.episode} ${last.accepted ? "swapped in" : "kept current"} · ${best.toFixed(3)}`;
    ep.className = "chip-value " + (last.accepted ? "good" : "bad");
  }
  const bank = st.last_bank;
  if (bank) {
    const b = $("st-bank");
    b.textContent = `${bank.bank} v${bank.version} ${bank.accepted ? "in use" : "refused"}`;
    b.className = "chip-value " + (bank.accepted ? "good" : "bad");
  }
}

// ------------------------------------------------------------------------------------- images
async function refreshImages() {
  const data = await api("/api/images");
  S.images = data.images;
  const list = $("image-list");
  list.replaceChildren(...S.images.map((img) => {
    const li = document.createElement("li");
    li.dataset.id = img.id;
    li.className = (img.labelled ? "labelled" : "") + (S.meta && S.meta.id === img.id ? " current" : "");
    li.innerHTML = `<span class="state"></span><span>${escapeHtml(img.id)}</span>`;
    li.title = img.labelled ? "labelled" : "not labelled yet";
    li.addEventListener("click", () => openImage(img.id));
    return li;
  }));
  const done = S.images.filter((i) => i.labelled).length;
  $("progress").textContent = `${done} / ${S.images.length}`;
}

async function openImage(id) {
  const meta = await api(`/api/images/${encodeURIComponent(id)}`);
  S.meta = meta;
  S.pixels = new Map();
  S.slice = meta.default_slice;
  S.win = Math.max(meta.window[1] - meta.window[0], 1e-6);
  S.lev = (meta.window[0] + meta.window[1]) / 2;
  viewer.dataset.image = id;
  viewer.classList.add("has-image");
  $("hud-image").textContent = `${meta.id} · ${meta.shape.join(" × ")}`;
  const volume = meta.shape.length === 3;
  $("slice-bar").hidden = !volume;
  $("slice").max = String(meta.slices - 1);
  $("slice").value = String(S.slice);
  buildPresets(meta);
  syncWindowSliders();
  document.querySelectorAll("#image-list li").forEach((li) => li.classList.toggle("current", li.dataset.id === id));
  await chooseRoutes(volume);
  await showSlice(S.slice);
}

// ------------------------------------------------------------------------------------- volume routes
// A volume on the propagation route is one annotation of the whole volume (/api/volumes): a box
// or click on any slice carries the mask through the next slices; the slider's marks show which
// slices hold it, and a progress bar shows a long propagation while it runs.
function propagating() {
  return S.route === "propagate";
}

async function chooseRoutes(volume) {
  const select = $("route");
  S.routes = [];
  if (volume) {
    try { S.routes = (await api(`/api/volumes/${encodeURIComponent(S.meta.id)}?slice=${S.slice}`)).routes || []; } catch (_) { S.routes = []; }
  }
  S.route = S.routes.includes(S.route) ? S.route : (S.routes[0] || null);
  select.replaceChildren(...S.routes.map((r) => {
    const o = document.createElement("option");
    o.value = r;
    o.textContent = { propagate: "propagate through slices", slice: "one slice at a time", "3d": "3D" }[r] || r;
    return o;
  }));
  select.value = S.route || "";
  select.hidden = $("route").previousElementSibling.hidden = S.routes.length < 2;
  viewer.dataset.route = S.route || "";
}

$("route").addEventListener("change", (e) => {
  S.route = e.target.value;
  viewer.dataset.route = S.route;
  if (S.meta) showSlice(S.slice).catch((err) => toast(err.message, true));
});

function volumePath(action = "") {
  return `/api/volumes/${encodeURIComponent(S.meta.id)}${action ? "/" + action : ""}`;
}

function volumeBody(extra = {}) {
  return { route: S.route, structure: S.structure, ...extra };
}

function drawSliceMarks(current = S.slice) {
  const box = $("slice-marks");
  if (!S.meta || S.meta.shape.length !== 3) { box.replaceChildren(); return; }
  const on = new Set(S.maskSlices), user = new Set(S.userSlices);
  box.replaceChildren(...Array.from({ length: S.meta.slices }, (_, z) => {
    const span = document.createElement("span");
    span.className = (user.has(z) ? "user" : on.has(z) ? "on" : "") + (z === current ? " current" : "");
    return span;
  }));
}

// While a volume's interaction runs, its progress is polled beside the pending request.
function watchProgress(id) {
  const el = $("volume-progress");
  let stopped = false;
  const poll = async () => {
    if (stopped) return;
    try {
      const p = await api(`/api/volumes/${encodeURIComponent(id)}/progress${S.structure ? `?structure=${encodeURIComponent(S.structure)}` : ""}`);
      if (stopped) return;
      if (p.running) {
        el.hidden = false;
        $("volume-progress-bar").max = Math.max(p.total, 1);
        $("volume-progress-bar").value = p.done;
        $("volume-progress-text").textContent = `propagating · ${p.done} / ≤ ${p.total} slices`;
        viewer.dataset.propagating = "1";
        viewer.dataset.progressDone = String(p.done);
      }
    } catch (_) { /* the request itself reports errors */ }
    if (!stopped) timer = setTimeout(poll, 200);
  };
  let timer = setTimeout(poll, 150);
  return () => {
    stopped = true;
    clearTimeout(timer);
    el.hidden = true;
    viewer.dataset.propagating = "0";
  };
}

async function showSlice(z) {
  if (!S.meta) return;
  S.slice = z;
  $("slice-value").textContent = `${z + 1} / ${S.meta.slices}`;
  if (!S.pixels.has(z)) {
    const res = await api(`/api/images/${encodeURIComponent(S.meta.id)}/slice/${z}`, { raw: true });
    S.width = Number(res.headers.get("x-width"));
    S.height = Number(res.headers.get("x-height"));
    S.pixels.set(z, new Float32Array(await res.arrayBuffer()));
  }
  const which = S.structure ? `&structure=${encodeURIComponent(S.structure)}` : "";
  const ticket = ++S.views;  // a click sent meanwhile makes this view stale: its reply is newer
  const session = propagating()
    ? await api(`${volumePath()}?slice=${z}&route=${S.route}${which}`)
    : await api(`/api/sessions/${encodeURIComponent(S.meta.id)}?slice=${z}${which}`);
  if (ticket === S.views) applySession(session);
  drawImageLayer();
  render();
}

// ------------------------------------------------------------------------------------- masks
function unpackMask(m) {
  const bytes = Uint8Array.from(atob(m.bits), (c) => c.charCodeAt(0));
  const out = new Uint8Array(m.width * m.height);
  for (let i = 0; i < out.length; i++) out[i] = (bytes[i >> 3] >> (7 - (i & 7))) & 1;
  return out;
}

function applySession(r) {
  S.mask = unpackMask(r.mask);
  S.area = r.mask.area;
  S.clicks = r.clicks || [];
  // a volume's boxes lie on their own slices: show the one on this slice
  S.box = r.box || (r.boxes || []).find((b) => b.lo[2] === (r.slice ?? S.slice)) || null;
  viewer.dataset.box = S.box ? [...S.box.lo, ...S.box.hi].join(",") : "";
  viewer.dataset.maskArea = String(S.area);
  viewer.dataset.clicks = String(S.clicks.length);
  $("mask-area").textContent = `${S.area.toLocaleString()} px`;
  $("n-pos").textContent = S.clicks.filter((c) => c.positive).length;
  $("n-neg").textContent = S.clicks.filter((c) => !c.positive).length;
  // A 3D model's mask spans slices: say which, so a user knows where to look.
  const held = r.mask_slices;
  $("mask-slices").textContent = held && held.length ? `mask on ${sliceRanges(held)}` : "";
  viewer.dataset.maskSlices = held ? held.join(",") : "";
  S.maskSlices = held || [];
  S.userSlices = r.user_slices || [];
  viewer.dataset.userSlices = S.userSlices.join(",");
  drawSliceMarks();
  drawMaskLayer();
}

function sliceRanges(zs) {
  const parts = [];
  let start = zs[0], prev = zs[0];
  for (const z of [...zs.slice(1), null]) {
    if (z !== null && z === prev + 1) { prev = z; continue; }
    parts.push(start === prev ? `${start + 1}` : `${start + 1}–${prev + 1}`);
    start = prev = z;
  }
  return `slice${zs.length > 1 ? "s" : ""} ${parts.join(", ")}`;
}

// ------------------------------------------------------------------------------------- drawing
function drawImageLayer() {
  const px = S.pixels.get(S.slice);
  if (!px) return;
  imageLayer.width = S.width;
  imageLayer.height = S.height;
  const lctx = imageLayer.getContext("2d");
  const img = lctx.createImageData(S.width, S.height);
  const lo = S.lev - S.win / 2;
  const scale = 255 / S.win;
  for (let i = 0; i < px.length; i++) {
    let v = (px[i] - lo) * scale;
    v = v < 0 ? 0 : v > 255 ? 255 : v;
    const j = i * 4;
    img.data[j] = img.data[j + 1] = img.data[j + 2] = v;
    img.data[j + 3] = 255;
  }
  lctx.putImageData(img, 0, 0);
  const wl = `W ${fmt(S.win)}  L ${fmt(S.lev)}`;
  $("hud-wl").textContent = S.meta.shape.length === 3 ? `slice ${S.slice + 1}/${S.meta.slices} · ${wl}` : wl;
}

function drawMaskLayer() {
  const w = S.width, h = S.height;
  maskLayer.width = w;
  maskLayer.height = h;
  if (!S.mask || S.mask.length !== w * h) return;
  const mctx = maskLayer.getContext("2d");
  const img = mctx.createImageData(w, h);
  const fill = Math.round(255 * S.opacity);
  const rgb = hexRgb(structureColour());
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const i = y * w + x;
      if (!S.mask[i]) continue;
      const edge = x === 0 || y === 0 || x === w - 1 || y === h - 1 ||
        !S.mask[i - 1] || !S.mask[i + 1] || !S.mask[i - w] || !S.mask[i + w];
      const j = i * 4;
      img.data[j] = rgb[0]; img.data[j + 1] = rgb[1]; img.data[j + 2] = rgb[2];
      img.data[j + 3] = edge ? Math.max(fill, 230) : fill;
    }
  }
  mctx.putImageData(img, 0, 0);
}

function fitView() {
  const dpr = window.devicePixelRatio || 1;
  const cw = Math.round(viewer.clientWidth * dpr), ch = Math.round(viewer.clientHeight * dpr);
  if (canvas.width !== cw || canvas.height !== ch) { canvas.width = cw; canvas.height = ch; }
  const s = Math.min(cw / S.width, ch / S.height) * 0.94;
  S.view = { s, ox: (cw - S.width * s) / 2, oy: (ch - S.height * s) / 2, dpr };
}

function render() {
  if (!S.meta || !S.width) return;
  fitView();
  const { s, ox, oy } = S.view;
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.save();
  if (S.meta.flip_y) { ctx.translate(ox, oy + S.height * s); ctx.scale(s, -s); } else { ctx.translate(ox, oy); ctx.scale(s, s); }
  ctx.imageSmoothingEnabled = s < 4;
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(imageLayer, 0, 0);
  if (S.overlayOn) {
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(maskLayer, 0, 0);
  }
  ctx.restore();
  drawClicks();
}

function drawBox(a, b, dashed) {
  // a and b: first and last pixel [x, y]; the outline runs round the pixels' outer edges
  const [x0, y0] = toScreen(Math.min(a[0], b[0]), Math.min(a[1], b[1]));
  const [x1, y1] = toScreen(Math.max(a[0], b[0]), Math.max(a[1], b[1]));
  const half = S.view.s / 2;
  ctx.save();
  ctx.lineWidth = 2 * (S.view.dpr || 1);
  ctx.strokeStyle = structureColour();
  if (dashed) ctx.setLineDash([6 * (S.view.dpr || 1), 4 * (S.view.dpr || 1)]);
  ctx.strokeRect(Math.min(x0, x1) - half, Math.min(y0, y1) - half, Math.abs(x1 - x0) + 2 * half, Math.abs(y1 - y0) + 2 * half);
  ctx.restore();
}

function drawClicks() {
  if (S.box && (S.box.lo[2] === undefined || S.box.lo[2] === S.slice)) drawBox(S.box.lo, S.box.hi, false);
  if (press && press.dragging) drawBox(press.start, press.end, true);
  const r = Math.max(4, 5 * (S.view.dpr || 1));
  for (const c of S.clicks) {
    const [x, y, z] = c.point;
    if (z !== undefined && z !== S.slice) continue;
    const [sx, sy] = toScreen(x, y);
    ctx.beginPath();
    ctx.arc(sx, sy, r, 0, Math.PI * 2);
    ctx.fillStyle = c.positive ? "#3fd07f" : "#ff5d6c";
    ctx.fill();
    ctx.lineWidth = 2 * (S.view.dpr || 1);
    ctx.strokeStyle = "rgba(255,255,255,.9)";
    ctx.stroke();
  }
}

function toScreen(x, y) {
  const { s, ox, oy } = S.view;
  const row = S.meta.flip_y ? S.height - 1 - y : y;
  return [ox + (x + 0.5) * s, oy + (row + 0.5) * s];
}

function toImage(ev, clamp = false) {
  const rect = canvas.getBoundingClientRect();
  const dpr = S.view.dpr || 1;
  const px = (ev.clientX - rect.left) * dpr, py = (ev.clientY - rect.top) * dpr;
  let x = Math.floor((px - S.view.ox) / S.view.s);
  let row = Math.floor((py - S.view.oy) / S.view.s);
  if (clamp) {  // a box dragged past the image's edge ends at the edge
    x = Math.min(S.width - 1, Math.max(0, x));
    row = Math.min(S.height - 1, Math.max(0, row));
  }
  if (x < 0 || row < 0 || x >= S.width || row >= S.height) return null;
  return [x, S.meta.flip_y ? S.height - 1 - row : row];
}

function fmt(v) {
  const a = Math.abs(v);
  return a >= 100 ? v.toFixed(0) : a >= 1 ? v.toFixed(1) : v.toFixed(3);
}

// ------------------------------------------------------------------------------------- clicks
function setBusy(delta) {
  S.pending += delta;
  viewer.dataset.busy = S.pending > 0 ? "1" : "0";
}

function enqueue(task) {
  setBusy(1);
  S.queue = S.queue.then(task).catch((err) => toast(err.message, true)).finally(() => setBusy(-1));
  return S.queue;
}

function clickAt(point, positive) {
  const full = S.meta.shape.length === 3 ? [...point, S.slice] : point;
  return interact("click", { point: full, positive });
}

function boxAt(a, b) {
  const lo = [Math.min(a[0], b[0]), Math.min(a[1], b[1])], hi = [Math.max(a[0], b[0]), Math.max(a[1], b[1])];
  const z = S.meta.shape.length === 3 ? [S.slice] : [];
  return interact("box", { lo: [...lo, ...z], hi: [...hi, ...z] });
}

// One click or box, in turn with the others: to the volume route while it propagates (with its
// progress shown), else to the session; then the mask of the slice shown, and the latency.
function interact(kind, body) {
  const t0 = performance.now();
  const id = S.meta.id;
  return enqueue(async () => {
    const done = propagating() ? watchProgress(id) : () => {};
    S.views++;  // a slice view fetched before this edit must not be shown over its reply
    let r;
    try {
      r = propagating()
        ? await api(volumePath(kind), { method: "POST", json: volumeBody(body) })
        : await api(`/api/sessions/${encodeURIComponent(id)}/${kind}`,
          { method: "POST", json: { ...body, structure: S.structure } });
    } finally { done(); }
    if (!S.meta || S.meta.id !== id) return;
    if (propagating() && r.slice !== S.slice) r = await reshow();
    applySession(r);
    render();
    const total = performance.now() - t0;
    $("hud-latency").innerHTML = `${kind} → mask <b>${total.toFixed(0)} ms</b> · model ${r.server_ms.toFixed(0)} ms`;
    viewer.dataset.latencyMs = total.toFixed(1);
  });
}

// The user moved to another slice while the interaction ran: show that slice of the new mask.
async function reshow() {
  const which = S.structure ? `&structure=${encodeURIComponent(S.structure)}` : "";
  return api(`${volumePath()}?slice=${S.slice}&route=${S.route}${which}`);
}

function sliceBody() {
  return { slice: S.meta && S.meta.per_slice ? S.slice : null, structure: S.structure };
}

// ------------------------------------------------------------------------------------- structures
function structureColour() {
  const s = S.structures.find((x) => x.name === S.structure);
  return s ? s.color : "#ffc83d";
}

function hexRgb(hex) {
  const n = parseInt(hex.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

function buildStructures() {
  const box = $("structures");
  box.replaceChildren(...(S.structures.length > 1 ? S.structures : []).map((s, i) => {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "structure";
    b.dataset.structure = s.name;
    b.setAttribute("role", "radio");
    b.setAttribute("aria-checked", String(s.name === S.structure));
    b.style.setProperty("--swatch", s.color);
    b.title = `annotate ${s.name}` + (i < 9 ? ` (Shift+${i + 1})` : "");
    b.innerHTML = `<span class="swatch"></span>${escapeHtml(s.name)}`;
    b.addEventListener("click", () => chooseStructure(s.name));
    return b;
  }));
  viewer.dataset.structure = S.structure || "";
}

function chooseStructure(name) {
  if (name === S.structure) return;
  S.structure = name;
  buildStructures();
  if (S.meta) showSlice(S.slice).catch((err) => toast(err.message, true));
}

function undo() {
  if (!S.meta) return;
  const id = S.meta.id;
  enqueue(async () => {
    S.views++;
    const r = propagating()
      ? await api(`${volumePath("undo")}?slice=${S.slice}`, { method: "POST", json: volumeBody() })
      : await api(`/api/sessions/${encodeURIComponent(id)}/undo`, { method: "POST", json: sliceBody() });
    applySession(r);
    render();
  });
}

function discard() {
  if (!S.meta) return;
  const id = S.meta.id;
  enqueue(async () => {
    if (propagating()) await api(volumePath("discard"), { method: "POST", json: volumeBody() });
    else await api(`/api/sessions/${encodeURIComponent(id)}/discard`, { method: "POST", json: sliceBody() });
    applySession({ mask: { width: S.width, height: S.height, bits: "", area: 0 }, clicks: [], box: null });
    S.mask = new Uint8Array(S.width * S.height);
    drawMaskLayer();
    render();
  });
}

function accept() {
  if (!S.meta) return;
  const id = S.meta.id;
  enqueue(async () => {
    const volume = propagating();
    const r = volume
      ? await api(volumePath("accept"), { method: "POST", json: volumeBody() })
      : await api(`/api/sessions/${encodeURIComponent(id)}/accept`, { method: "POST", json: sliceBody() });
    S.accepted += 1;
    viewer.dataset.accepted = String(S.accepted);
    const n = (r.slices || r.cases || []).length;
    const where = (volume ? ` (${n} slice${n === 1 ? "" : "s"})`
      : r.slice === null || r.slice === undefined ? "" : ` slice ${r.slice + 1}`)
      + (S.structures.length > 1 ? ` · ${r.structure}` : "");
    toast(`Saved ${id}${where} to the annotation cache`);
    logLine(`accepted <b>${escapeHtml(id)}</b>${where} · update ${r.post_ms.toFixed(0)} ms`);
    await refreshImages();
    refreshStatus();
    if ($("auto-next").checked && (!S.meta.per_slice || volume)) {
      await nextImage();
    } else {
      await showSlice(S.slice);
    }
  });
}

async function nextImage() {
  const after = S.meta ? `?after=${encodeURIComponent(S.meta.id)}` : "";
  const r = await api(`/api/next${after}`);
  if (!r.id) { toast("Every image is labelled"); return; }
  await openImage(r.id);
}

// ------------------------------------------------------------------------------------- window/level
function buildPresets(meta) {
  const box = $("presets");
  box.replaceChildren();
  const presets = { auto: meta.window, ...meta.presets };
  Object.entries(presets).forEach(([name, [lo, hi]], i) => {
    const b = document.createElement("button");
    b.className = "btn";
    b.textContent = name;
    b.title = `window ${fmt(hi - lo)}, level ${fmt((lo + hi) / 2)}` + (i < 9 ? ` (${i + 1})` : "");
    b.addEventListener("click", () => setWindow(hi - lo, (lo + hi) / 2));
    box.append(b);
  });
}

function rangeSpan() {
  const [lo, hi] = S.meta.range;
  return Math.max(hi - lo, 1e-6);
}

function syncWindowSliders() {
  const [lo] = S.meta.range;
  const span = rangeSpan();
  $("window").value = String(Math.round(Math.min(1000, (S.win / (2 * span)) * 1000)));
  $("level").value = String(Math.round(Math.min(1000, Math.max(0, ((S.lev - (lo - span / 2)) / (2 * span)) * 1000))));
  $("window-value").textContent = fmt(S.win);
  $("level-value").textContent = fmt(S.lev);
}

function setWindow(win, lev) {
  S.win = Math.max(win, rangeSpan() * 1e-3);
  S.lev = lev;
  syncWindowSliders();
  drawImageLayer();
  render();
}

$("window").addEventListener("input", (e) => { if (S.meta) setWindow((Number(e.target.value) / 1000) * 2 * rangeSpan(), S.lev); });
$("level").addEventListener("input", (e) => {
  if (!S.meta) return;
  const span = rangeSpan();
  setWindow(S.win, S.meta.range[0] - span / 2 + (Number(e.target.value) / 1000) * 2 * span);
});
$("opacity").addEventListener("input", (e) => {
  S.opacity = Number(e.target.value) / 100;
  $("opacity-value").textContent = `${e.target.value}%`;
  drawMaskLayer();
  render();
});

// ------------------------------------------------------------------------------------- input
// Left button: a press that moves more than BOX_DRAG_PX on screen draws a box (shown while
// drawing, sent on release); one that does not is a positive click. Right button: a negative
// click. Shift + drag: window / level.
const BOX_DRAG_PX = 5;
let drag = null;
let press = null;
canvas.addEventListener("contextmenu", (e) => e.preventDefault());
canvas.addEventListener("mousedown", (e) => {
  if (!S.meta) return;
  if (e.shiftKey) { drag = { x: e.clientX, y: e.clientY, win: S.win, lev: S.lev }; return; }
  if (e.button !== 0 && e.button !== 2) return;
  const point = toImage(e);
  if (!point) return;
  if (e.button === 2) { clickAt(point, false); return; }
  press = { x: e.clientX, y: e.clientY, start: point, end: point, dragging: false };
});
window.addEventListener("mousemove", (e) => {
  if (drag) {
    const k = rangeSpan() / 400;
    setWindow(drag.win + (e.clientX - drag.x) * k, drag.lev + (e.clientY - drag.y) * k);
    return;
  }
  if (!press || !S.meta) return;
  if (!press.dragging && Math.hypot(e.clientX - press.x, e.clientY - press.y) < BOX_DRAG_PX) return;
  press.dragging = true;
  press.end = toImage(e, true);
  render();
});
window.addEventListener("mouseup", () => {
  drag = null;
  if (!press) return;
  const done = press;
  press = null;
  if (done.dragging) boxAt(done.start, done.end); else clickAt(done.start, true);
  render();
});
canvas.addEventListener("wheel", (e) => {
  if (!S.meta || S.meta.slices <= 1) return;
  e.preventDefault();
  stepSlice(e.deltaY > 0 ? -1 : 1);
}, { passive: false });

let sliceTimer = null;
function stepSlice(delta) {
  const z = Math.min(S.meta.slices - 1, Math.max(0, S.slice + delta));
  $("slice").value = String(z);
  scheduleSlice(z);
}
function scheduleSlice(z) {
  S.slice = z;  // a click before the debounced fetch lands on the slice the label names
  $("slice-value").textContent = `${z + 1} / ${S.meta.slices}`;
  drawSliceMarks(z);
  clearTimeout(sliceTimer);
  sliceTimer = setTimeout(() => showSlice(z).catch((err) => toast(err.message, true)), 60);
}
$("slice").addEventListener("input", (e) => scheduleSlice(Number(e.target.value)));

$("btn-undo").addEventListener("click", undo);
$("btn-accept").addEventListener("click", accept);
$("btn-discard").addEventListener("click", discard);
$("btn-next").addEventListener("click", () => nextImage().catch((err) => toast(err.message, true)));

document.addEventListener("keydown", (e) => {
  if (e.target instanceof HTMLInputElement && e.target.type !== "range") return;
  if ($("token-dialog").open || !S.meta) return;
  const key = e.key.toLowerCase();
  if (key === "z" || key === "backspace") { e.preventDefault(); undo(); }
  else if (key === "enter" || key === "a") { e.preventDefault(); accept(); }
  else if (key === "n") { nextImage().catch((err) => toast(err.message, true)); }
  else if (key === "escape") { discard(); }
  else if (key === "o") { S.overlayOn = !S.overlayOn; render(); }
  else if (key === "arrowup" || key === "pageup") { e.preventDefault(); if (S.meta.slices > 1) stepSlice(1); }
  else if (key === "arrowdown" || key === "pagedown") { e.preventDefault(); if (S.meta.slices > 1) stepSlice(-1); }
  else if (e.shiftKey && /^Digit[1-9]$/.test(e.code)) { const s = S.structures[Number(e.code.slice(5)) - 1]; if (s) chooseStructure(s.name); }
  else if (/^[1-9]$/.test(key)) { const b = $("presets").children[Number(key) - 1]; if (b) b.click(); }
});

$("user-name").addEventListener("change", (e) => {
  const name = e.target.value.trim();
  if (!USER_PATTERN.test(name)) { toast("Use letters, digits, '.', '_' or '-' for the annotator name", true); e.target.value = S.user; return; }
  S.user = name;
  localStorage.setItem("fedpoint.user", name);
  if (S.meta) showSlice(S.slice);
});

window.addEventListener("resize", render);

// ------------------------------------------------------------------------------------- start
let started = false;
async function start() {
  if (started) return;
  started = true;
  const st = await api("/api/status");
  S.structures = st.structures || [];
  S.structure = S.structures.length ? S.structures[0].name : null;
  buildStructures();
  const me = await api("/api/me");
  S.named = me.named;
  if (me.named) {  // the token says who this is: show it, do not let the page claim another name
    S.user = me.user;
    $("user-name").value = me.user;
    $("user-name").disabled = true;
    $("user-name").title = "your name comes from your personal token";
  }
  await refreshStatus();
  await refreshImages();
  setInterval(refreshStatus, 3000);
  const first = S.images.find((i) => !i.labelled) || S.images[0];
  if (first) await openImage(first.id);
}

S.user = localStorage.getItem("fedpoint.user") || "web";
$("user-name").value = S.user;
S.token = readToken();
if (S.token) {
  api("/api/status").then(start).catch((err) => { if (!$("token-dialog").open) toast(err.message, true); });
} else {
  askToken();
}
