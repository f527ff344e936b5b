"""The investigator's page of ``c4s serve``: a server-rendered shell the JSON API fills.

``PAGE_HTML`` (with ``{{VERSION}}``), ``LOGIN_HTML`` (the token form),
``APP_CSS`` and ``APP_JS``; served by :func:`c4s_core.serve.app.create_app`
under a strict Content-Security-Policy (no inline script or style).
"""

LOGIN_HTML = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>c4s serve: sign in</title><link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/app.css"></head><body class="login"><form method="post" action="/login">
<h1>c4s serve</h1><p>This server needs its access token.</p><!--msg-->
<input type="password" name="token" placeholder="token" autofocus autocomplete="current-password">
<button type="submit">Sign in</button></form></body></html>"""

PAGE_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>c4s · sketch to mugshot search</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/app.css">
<script src="/static/app.js" defer></script>
</head>
<body>
<header>
  <div class="brand"><b>c4s</b> sketch → mugshot search <span class="ver">v{{VERSION}}</span></div>
  <div class="state" id="state">
    <span class="chip" id="st-model" title="model">model …</span>
    <span class="chip" id="st-index" title="gallery index">index …</span>
    <span class="chip" id="st-device" title="execution device">device …</span>
    <span class="chip" id="st-gen" title="sketch generator" hidden>generator …</span>
    <a class="chip link" href="/docs" target="_blank" rel="noopener">API</a>
  </div>
</header>
<main>
  <section class="probe">
    <label id="drop" class="drop" for="file">
      <input type="file" id="file" accept="image/png,image/jpeg,image/webp,image/bmp,image/gif">
      <span class="big">Drop a sketch here</span>
      <span class="small">or click to choose a file (PNG, JPEG, WebP, BMP, GIF)</span>
    </label>
    <div class="controls">
      <label>Top <select id="topk"><option>5</option><option selected>10</option><option>20</option><option>50</option></select> candidates</label>
    </div>
    <div id="msg" class="msg" role="status" hidden></div>
    <div class="pair" id="probe-pair" hidden>
      <figure><img id="probe-img" alt="uploaded sketch"><figcaption id="probe-cap">sketch</figcaption></figure>
      <figure><img id="aligned-img" class="pix" alt="aligned model input"><figcaption id="aligned-cap">aligned</figcaption></figure>
    </div>
  </section>
  <section class="results">
    <div class="results-head"><h2>Candidates</h2><span id="timing" class="muted"></span></div>
    <div id="empty" class="empty">Upload a sketch to rank the gallery.</div>
    <ol id="grid" class="grid"></ol>
  </section>
</main>
<dialog id="detail">
  <div class="dlg-head"><h2 id="d-title">Candidate</h2><button id="d-close" class="close" aria-label="close">×</button></div>
  <div class="compare">
    <figure><img id="d-sketch" alt="sketch"><figcaption id="d-sketchcap">probe sketch</figcaption></figure>
    <figure><img id="d-mug" alt="mugshot"><figcaption id="d-mugcap">mugshot</figcaption></figure>
  </div>
  <div id="d-others" class="others"></div>
  <div id="d-gen" class="gen" hidden>
    <div class="gen-controls">
      <label>Style <select id="g-style"></select></label>
      <label>Count <select id="g-count"><option>1</option><option selected>2</option><option>3</option><option>4</option></select></label>
      <button id="g-run">Generate sketches from this mugshot</button>
      <span id="g-msg" class="muted"></span>
    </div>
    <div id="g-out" class="gen-out"></div>
  </div>
</dialog>
</body>
</html>
"""

APP_CSS = """
:root { --bg:#f4f5f7; --card:#fff; --ink:#1d2330; --muted:#6b7280; --line:#dde1e7; --accent:#2a5bd7; --good:#1f9d55; }
* { box-sizing:border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; color:var(--ink); background:var(--bg); }
header { display:flex; align-items:center; justify-content:space-between; gap:16px; flex-wrap:wrap;
  padding:10px 20px; background:#1d2330; color:#fff; }
.brand { font-size:16px; } .brand b { color:#8fb3ff; font-size:18px; margin-right:6px; } .ver { color:#9aa3b2; font-size:12px; }
.state { display:flex; gap:8px; flex-wrap:wrap; }
.chip { background:#2c3446; border:1px solid #3c465c; border-radius:999px; padding:3px 10px; font-size:12px; color:#dfe6f3; white-space:nowrap; }
.chip.link { color:#8fb3ff; text-decoration:none; } .chip.warn { border-color:#d9a400; }
main { display:grid; grid-template-columns:minmax(280px,360px) 1fr; gap:20px; padding:20px; align-items:start; }
@media (max-width:800px) { main { grid-template-columns:1fr; } }
section { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:16px; }
.drop { display:flex; flex-direction:column; align-items:center; justify-content:center; gap:4px; height:150px;
  border:2px dashed #b7c0ce; border-radius:10px; cursor:pointer; text-align:center; color:var(--muted); transition:.15s; }
.drop:hover, .drop.over { border-color:var(--accent); background:#eef3ff; color:var(--accent); }
.drop input { display:none; } .drop .big { font-size:17px; font-weight:600; color:var(--ink); } .drop .small { font-size:12px; }
.controls { margin:12px 0; } select { font:inherit; padding:2px 4px; }
.msg { padding:8px 10px; border-radius:6px; background:#eef3ff; margin:8px 0; }
.msg.error { background:#fdecec; color:#a61b1b; }
.pair { display:grid; grid-template-columns:1fr 1fr; gap:10px; }
figure { margin:0; text-align:center; } figcaption { font-size:12px; color:var(--muted); margin-top:4px; }
.pair img { width:100%; aspect-ratio:1; object-fit:contain; background:#fafafa; border:1px solid var(--line); border-radius:6px; }
img.pix { image-rendering:pixelated; }
.results-head { display:flex; align-items:baseline; justify-content:space-between; }
h2 { font-size:15px; margin:0 0 10px; } .muted { color:var(--muted); font-size:12px; }
.empty { color:var(--muted); padding:40px; text-align:center; border:1px dashed var(--line); border-radius:8px; }
.grid { list-style:none; margin:0; padding:0; display:grid; grid-template-columns:repeat(auto-fill,minmax(150px,1fr)); gap:12px; }
.card { background:#fff; border:1px solid var(--line); border-radius:8px; overflow:hidden; cursor:pointer; transition:.12s; position:relative; }
.card:hover, .card:focus { border-color:var(--accent); box-shadow:0 2px 10px rgba(42,91,215,.18); outline:none; }
.card img, .card .noimg { display:block; width:100%; aspect-ratio:1; object-fit:cover; background:#eceff3; }
.card .noimg { display:flex; align-items:center; justify-content:center; color:var(--muted); font-size:12px; }
.card .rank { position:absolute; top:6px; left:6px; background:rgba(29,35,48,.85); color:#fff; border-radius:999px; padding:1px 8px; font-size:12px; font-weight:600; }
.card .meta { padding:6px 8px 8px; } .card .id { font-weight:600; overflow:hidden; text-overflow:ellipsis; white-space:nowrap; }
.card .score { font-variant-numeric:tabular-nums; color:var(--muted); font-size:12px; }
.bar { height:4px; background:#e6e9ee; border-radius:2px; margin-top:4px; } .bar i { display:block; height:100%; background:var(--good); border-radius:2px; }
dialog { border:none; border-radius:12px; padding:0; width:min(960px,94vw); max-height:92vh; box-shadow:0 20px 60px rgba(0,0,0,.35); }
dialog::backdrop { background:rgba(15,20,30,.55); }
.dlg-head { display:flex; justify-content:space-between; align-items:center; padding:12px 16px; border-bottom:1px solid var(--line); }
.dlg-head h2 { margin:0; } .close { font-size:22px; background:none; border:none; cursor:pointer; color:var(--muted); }
.compare { display:grid; grid-template-columns:1fr 1fr; gap:16px; padding:16px; }
.compare figure { display:flex; flex-direction:column; align-items:center; }
.compare img { height:min(56vh,440px); max-width:100%; object-fit:contain; border:1px solid var(--line); border-radius:6px; background:#fafafa; }
.others { display:flex; gap:8px; padding:0 16px 12px; flex-wrap:wrap; } .others img { height:64px; border:1px solid var(--line); border-radius:4px; cursor:pointer; }
.gen { border-top:1px solid var(--line); padding:12px 16px 16px; } .gen-controls { display:flex; gap:12px; align-items:center; flex-wrap:wrap; }
.gen-out { display:flex; gap:12px; flex-wrap:wrap; margin-top:12px; } .gen-out img { width:160px; border:1px solid var(--line); border-radius:6px; }
button { font:inherit; padding:5px 12px; border-radius:6px; border:1px solid var(--accent); background:var(--accent); color:#fff; cursor:pointer; }
button:disabled { opacity:.6; cursor:wait; } .close { border:none; }
body.login { display:flex; align-items:center; justify-content:center; height:100vh; }
body.login form { background:#fff; padding:28px; border-radius:10px; border:1px solid var(--line); display:flex; flex-direction:column; gap:10px; min-width:300px; }
body.login input { font:inherit; padding:6px 8px; } .err { color:#a61b1b; }
"""

APP_JS = r"""
"use strict";
const $ = (id) => document.getElementById(id);
let status = null, probeURL = null, lastFile = null;

function el(tag, cls, text) { const e = document.createElement(tag); if (cls) e.className = cls; if (text != null) e.textContent = text; return e; }
function say(text, error) { const m = $("msg"); m.textContent = text; m.hidden = !text; m.classList.toggle("error", !!error); }
async function api(url, opts) {
  const r = await fetch(url, Object.assign({credentials: "same-origin"}, opts || {}));
  let body = null; try { body = await r.json(); } catch (e) { body = null; }
  if (!r.ok) {
    let d = body && body.detail;
    if (Array.isArray(d)) d = d.map((x) => (x.loc || []).join(".") + ": " + x.msg).join("; ");
    throw new Error(d || ("HTTP " + r.status));
  }
  return body;
}

async function loadStatus() {
  try { status = await api("/api/status"); } catch (e) { say("Cannot read the server state: " + e.message, true); return; }
  const m = status.model, ix = status.index, d = status.device, g = status.generator;
  $("st-model").textContent = "model " + (m.backbone || m.file) + " · " + (m.input_size || []).join("×") + " · " + m.hash.slice(0, 8);
  $("st-model").title = m.path;
  $("st-index").textContent = "index " + ix.identities.toLocaleString() + " identities · " + ix.rows.toLocaleString() + " images";
  $("st-index").title = ix.name + " (generation " + ix.generation + ")" + (ix.reload_error ? " — " + ix.reload_error : "");
  $("st-index").classList.toggle("warn", !!ix.reload_error || ix.images_stored === 0);
  $("st-device").textContent = "device " + d.name + " (" + d.providers[0].replace("ExecutionProvider", "") + ")";
  if (g) {
    $("st-gen").hidden = false;
    $("st-gen").textContent = "generator " + g.name + (g.loaded ? " · " + g.device : " · not loaded yet");
    const sel = $("g-style"); sel.textContent = "";
    for (const s of g.styles) { const o = el("option", null, s); o.value = s; if (s === g.default_style) o.selected = true; sel.appendChild(o); }
  }
  const k = String(status.default_top_k), sel = $("topk");
  if (![...sel.options].some((o) => o.value === k)) sel.appendChild(el("option", null, k));
  sel.value = k;
}

async function search(file) {
  if (!file) return;
  lastFile = file;
  if (probeURL) URL.revokeObjectURL(probeURL);
  probeURL = URL.createObjectURL(file);
  $("probe-img").src = probeURL; $("probe-cap").textContent = file.name;
  $("probe-pair").hidden = false; $("aligned-img").removeAttribute("src");
  say("Searching…");
  const fd = new FormData(); fd.append("image", file);
  try {
    const res = await api("/search?top_k=" + encodeURIComponent($("topk").value), {method: "POST", body: fd});
    const q = res.query;
    $("aligned-img").src = q.aligned;
    $("aligned-cap").textContent = "aligned " + q.input_size.join("×") + (q.aligner ? " · " + q.aligner : " · resized") + " (" + q.width + "×" + q.height + " in)";
    $("timing").textContent = res.hits.length + " identities in " + res.elapsed_ms.toFixed(0) + " ms";
    say("");
    render(res.hits);
  } catch (e) { say(e.message, true); render([]); $("timing").textContent = ""; }
}

function render(hits) {
  const grid = $("grid"); grid.textContent = "";
  $("empty").hidden = hits.length > 0;
  const top = hits.length ? Math.max(hits[0].score, 1e-6) : 1;
  hits.forEach((h) => {
    const li = el("li", "card"); li.tabIndex = 0; li.dataset.identity = h.identity;
    if (h.image) { const im = el("img"); im.src = h.image; im.alt = h.identity; im.loading = "lazy"; li.appendChild(im); }
    else li.appendChild(el("div", "noimg", "no image in index"));
    li.appendChild(el("span", "rank", "#" + h.rank));
    const meta = el("div", "meta");
    meta.appendChild(el("div", "id", h.identity)).title = h.identity;
    meta.appendChild(el("div", "score", "score " + h.score.toFixed(4)));
    const bar = el("div", "bar"), fill = el("i"); fill.style.width = Math.max(0, Math.min(100, 100 * h.score / top)).toFixed(1) + "%";
    bar.appendChild(fill); meta.appendChild(bar); li.appendChild(meta);
    li.addEventListener("click", () => openCandidate(h));
    li.addEventListener("keydown", (ev) => { if (ev.key === "Enter") openCandidate(h); });
    grid.appendChild(li);
  });
}

async function openCandidate(h) {
  $("d-title").textContent = "#" + h.rank + " · " + h.identity + " · score " + h.score.toFixed(4);
  $("d-sketch").src = probeURL || "";
  const mug = $("d-mug");
  mug.dataset.source = h.source || "";
  if (h.image) { mug.src = h.image; } else { mug.removeAttribute("src"); mug.alt = "no image stored in the index"; }
  $("d-mugcap").textContent = h.source ? "mugshot · " + h.source : "mugshot";
  $("d-others").textContent = ""; $("g-out").textContent = ""; $("g-msg").textContent = "";
  $("d-gen").hidden = !(status && status.generator);
  $("g-run").onclick = () => generate(h);
  const dlg = $("detail"); if (!dlg.open) dlg.showModal();
  try {
    const c = await api(h.candidate);
    if (c.images.length > 1) {
      c.images.forEach((im) => {
        if (!im.image) return;
        const t = el("img"); t.src = im.image; t.alt = im.source; t.title = im.source;
        t.addEventListener("click", () => { mug.dataset.source = im.source; mug.src = im.image; });
        $("d-others").appendChild(t);
      });
    }
  } catch (e) { $("d-others").appendChild(el("span", "muted", e.message)); }
}

async function generate(h) {
  const btn = $("g-run"); btn.disabled = true; $("g-msg").textContent = "Generating… (the first call loads the generator)";
  const fd = new FormData(); fd.append("style", $("g-style").value); fd.append("count", $("g-count").value);
  try {
    const r = await api(h.candidate + "/sketches", {method: "POST", body: fd});
    const out = $("g-out"); out.textContent = "";
    r.images.forEach((src, i) => { const f = el("figure"), im = el("img"); im.src = src; im.alt = r.style + " " + (i + 1);
      f.appendChild(im); f.appendChild(el("figcaption", null, r.style + " #" + (i + 1))); out.appendChild(f); });
    $("g-msg").textContent = r.images.length + " sketches in " + (r.elapsed_ms / 1000).toFixed(1) + " s";
    loadStatus();
  } catch (e) { $("g-msg").textContent = e.message; }
  btn.disabled = false;
}

function sizeCaption(img, cap, label) {
  img.onload = () => { $(cap).textContent = label() + " · " + img.naturalWidth + "×" + img.naturalHeight + " px"; };
}

window.addEventListener("DOMContentLoaded", () => {
  loadStatus();
  sizeCaption($("d-sketch"), "d-sketchcap", () => "probe sketch");
  sizeCaption($("d-mug"), "d-mugcap", () => "mugshot" + ($("d-mug").dataset.source ? " · " + $("d-mug").dataset.source : ""));
  const drop = $("drop");
  $("file").addEventListener("change", (ev) => search(ev.target.files[0]));
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (ev) => { ev.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (ev) => { ev.preventDefault(); drop.classList.remove("over"); }));
  drop.addEventListener("drop", (ev) => search(ev.dataTransfer.files[0]));
  $("topk").addEventListener("change", () => { if (lastFile) search(lastFile); });
  $("d-close").addEventListener("click", () => $("detail").close());
  $("detail").addEventListener("click", (ev) => { if (ev.target === $("detail")) $("detail").close(); });
});
"""
