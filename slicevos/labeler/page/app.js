// slicevos-label page: three views over server-rendered slices, drawing, propagation, save.
// Slices come one at a time as PNG (grey image; labels as grey value = label id) and are
// coloured here. State for tests and scripts: window.labeler.
"use strict";
(() => {
  const token = document.querySelector('meta[name="slicevos-token"]').content;
  const $ = (sel) => document.querySelector(sel);
  const S = {
    info: null, status: null, z: 0, y: 0, x: 0, window: "abdomen", organ: 1, tool: "brush",
    radius: 5, revisions: [], revisionTotal: 0, ready: false, lastError: null,
  };
  const views = {};
  let lut = new Uint8ClampedArray(256 * 4);

  // -- server ------------------------------------------------------------------------------
  async function call(path, body) {
    const options = { headers: { "X-Slicevos-Token": token } };
    if (body !== undefined) {
      options.method = "POST";
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    const response = await fetch("api/" + path, options);
    if (!response.ok) {
      let message = response.status + " " + response.statusText;
      try { message = (await response.json()).error || message; } catch (_) { /* not JSON */ }
      throw new Error(message);
    }
    return response;
  }
  const json = async (path, body) => (await call(path, body)).json();
  // Calls that answer the status. An answer older than one already applied (a poll overtaken
  // by an edit) is dropped (null), so the page never goes back to keys it has moved past.
  let statusAsked = 0, statusApplied = 0;
  async function statusCall(path, body) {
    const seq = ++statusAsked;
    const st = await json(path, body);
    if (seq < statusApplied) return null;
    statusApplied = seq;
    return st;
  }
  async function bitmap(path) {
    const blob = await (await call(path)).blob();
    return createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  }

  function showBanner(text, isError, offerDiscard) {
    $("#banner-text").textContent = text;
    $("#banner").classList.toggle("error", !!isError);
    $("#banner-discard").hidden = !offerDiscard;
    $("#banner").hidden = false;
  }
  function showError(err) {
    S.lastError = String(err.message || err);
    showBanner(S.lastError, true, false);
  }
  async function act(promise) {
    try { return await promise; } catch (err) { showError(err); return null; }
  }

  // -- views -------------------------------------------------------------------------------
  function makeView(name) {
    const root = $("#view-" + name);
    const canvas = root.querySelector("canvas");
    const view = {
      name, root, canvas, ctx: canvas.getContext("2d"), zoom: 1, image: null, labels: null,
      imageKey: null, labelKey: null, busy: false, again: false,
      overlay: document.createElement("canvas"), preview: null,
    };
    root.querySelectorAll("[data-zoom]").forEach((b) => b.addEventListener("click", () => {
      view.zoom = Math.min(8, Math.max(0.25, view.zoom * (b.dataset.zoom > 0 ? 1.25 : 0.8)));
      layout(view);
    }));
    canvas.addEventListener("wheel", (e) => {
      e.preventDefault();
      if (e.ctrlKey) {
        view.zoom = Math.min(8, Math.max(0.25, view.zoom * (e.deltaY < 0 ? 1.25 : 0.8)));
        layout(view);
      } else {
        step(name, (e.deltaY < 0 ? 1 : -1) * (e.shiftKey ? 5 : 1));
      }
    }, { passive: false });
    views[name] = view;
    return view;
  }

  function planeSize(name) {
    const [d, h, w] = S.info.shape;
    return { axial: [w, h], coronal: [w, d], sagittal: [h, d] }[name];
  }
  function index(name) { return { axial: S.z, coronal: S.y, sagittal: S.x }[name]; }
  function extent(name) {
    const [d, h, w] = S.info.shape;
    return { axial: d, coronal: h, sagittal: w }[name];
  }

  function layout(view) {
    const [w, h] = planeSize(view.name);
    const [dz, dy, dx] = S.info.spacing;
    const rowMm = { axial: dy, coronal: dz, sagittal: dz }[view.name];
    const colMm = { axial: dx, coronal: dx, sagittal: dy }[view.name];
    const base = (view.name === "axial" ? 640 : 360) / w;
    view.canvas.width = w;
    view.canvas.height = h;
    view.canvas.style.width = Math.round(w * base * view.zoom) + "px";
    view.canvas.style.height = Math.round(h * base * view.zoom * rowMm / colMm) + "px";
    draw(view);
  }

  function step(name, delta) {
    const next = Math.min(extent(name) - 1, Math.max(0, index(name) + delta));
    setPosition(name, next);
  }
  function setPosition(name, value) {
    if (name === "axial") S.z = value; else if (name === "coronal") S.y = value; else S.x = value;
    refreshAll();
  }
  function goTo(z) { S.z = Math.min(S.info.shape[0] - 1, Math.max(0, z)); refreshAll(); }

  function labelRevision(name) {
    return name === "axial" ? S.revisions[S.z] || 0 : S.revisionTotal;
  }

  async function refresh(view) {
    if (view.busy) { view.again = true; return; }
    view.busy = true;
    try {
      do {
        view.again = false;
        const i = index(view.name);
        const imageKey = i + "/" + S.window;
        const labelKey = i + "/" + labelRevision(view.name);
        const jobs = [];
        if (imageKey !== view.imageKey) {
          jobs.push(bitmap(`image/${view.name}/${i}?window=${S.window}`).then((b) => {
            view.image = b; view.imageKey = imageKey;
          }));
        }
        if (labelKey !== view.labelKey) {
          jobs.push(bitmap(`labels/${view.name}/${i}`).then((b) => {
            setLabels(view, b); view.labelKey = labelKey;
          }));
        }
        await Promise.all(jobs);
        draw(view);  // also for the crosshair of another view's move
      } while (view.again);
    } catch (err) {
      showError(err);
    } finally {
      view.busy = false;
    }
  }
  function refreshAll() {
    Object.values(views).forEach((v) => refresh(v));
    updatePositions();
    drawStrips();
  }

  function setLabels(view, bmp) {
    const c = document.createElement("canvas");
    c.width = bmp.width; c.height = bmp.height;
    const cx = c.getContext("2d", { willReadFrequently: true });
    cx.drawImage(bmp, 0, 0);
    const rgba = cx.getImageData(0, 0, bmp.width, bmp.height).data;
    const ids = new Uint8Array(bmp.width * bmp.height);
    for (let p = 0; p < ids.length; p++) ids[p] = rgba[4 * p];
    view.labels = { ids, width: bmp.width, height: bmp.height };
    const colour = new ImageData(bmp.width, bmp.height);
    const out = colour.data;
    for (let p = 0; p < ids.length; p++) {
      const id = ids[p];
      if (id) { out.set(lut.subarray(4 * id, 4 * id + 4), 4 * p); }
    }
    view.overlay.width = bmp.width; view.overlay.height = bmp.height;
    view.overlay.getContext("2d").putImageData(colour, 0, 0);
  }

  function draw(view) {
    const ctx = view.ctx;
    ctx.clearRect(0, 0, view.canvas.width, view.canvas.height);
    if (view.image) ctx.drawImage(view.image, 0, 0);
    if (view.labels) ctx.drawImage(view.overlay, 0, 0);
    const [d] = S.info.shape;
    ctx.save();
    ctx.strokeStyle = "rgba(255, 230, 0, 0.45)";
    ctx.lineWidth = view.canvas.width / Math.max(1, parseFloat(view.canvas.style.width));
    ctx.setLineDash([4, 4]);
    const line = (x0, y0, x1, y1) => { ctx.beginPath(); ctx.moveTo(x0, y0); ctx.lineTo(x1, y1); ctx.stroke(); };
    const [w, h] = planeSize(view.name);
    if (view.name === "coronal") { line(0, d - 1 - S.z + 0.5, w, d - 1 - S.z + 0.5); line(S.x + 0.5, 0, S.x + 0.5, h); }
    if (view.name === "sagittal") { line(0, d - 1 - S.z + 0.5, w, d - 1 - S.z + 0.5); line(S.y + 0.5, 0, S.y + 0.5, h); }
    if (view.name === "axial") { line(S.x + 0.5, 0, S.x + 0.5, 6); line(0, S.y + 0.5, 6, S.y + 0.5); }
    ctx.restore();
    if (view.preview) {
      ctx.save();
      const c = S.info.organs.find((o) => o.id === S.organ).colour;
      ctx.fillStyle = S.tool === "eraser" ? "rgba(0,0,0,0.6)" : `rgba(${c[0]},${c[1]},${c[2]},0.7)`;
      for (const [px, py] of view.preview) {
        ctx.beginPath(); ctx.arc(px, py, Math.max(0.5, S.radius), 0, 2 * Math.PI); ctx.fill();
      }
      ctx.restore();
    }
  }

  function pixelOf(view, e) {
    const rect = view.canvas.getBoundingClientRect();
    return [Math.floor((e.clientX - rect.left) * view.canvas.width / rect.width),
      Math.floor((e.clientY - rect.top) * view.canvas.height / rect.height)];
  }

  function bindAxialDrawing(view) {
    const c = view.canvas;
    c.addEventListener("pointerdown", (e) => {
      if (e.button !== 0) return;
      const p = pixelOf(view, e);
      if (S.tool === "fill") {
        act(statusCall("fill", { z: S.z, label: S.organ, x: p[0], y: p[1] }).then(applyStatus));
        return;
      }
      c.setPointerCapture(e.pointerId);
      view.preview = [p];
      draw(view);
    });
    c.addEventListener("pointermove", (e) => {
      if (!view.preview) return;
      const p = pixelOf(view, e);
      const last = view.preview[view.preview.length - 1];
      if (p[0] !== last[0] || p[1] !== last[1]) { view.preview.push(p); draw(view); }
    });
    const finish = () => {
      if (!view.preview) return;
      const points = view.preview;
      view.preview = null;
      act(statusCall("stroke", { z: S.z, label: S.organ, tool: S.tool, radius: S.radius, points })
        .then(applyStatus)).then(() => draw(view));
    };
    c.addEventListener("pointerup", finish);
    c.addEventListener("pointercancel", finish);
  }

  function bindSideClicks(view) {
    view.canvas.title = "Click: go there. Shift+click: the selected organ is not on this " +
      "axial slice (it ends before it)";
    view.canvas.addEventListener("click", (e) => {
      const [col, row] = pixelOf(view, e);
      const d = S.info.shape[0];
      S.z = Math.min(d - 1, Math.max(0, d - 1 - row));
      if (view.name === "coronal") S.x = col; else S.y = col;
      refreshAll();
      if (e.shiftKey) organEnd();
    });
  }

  // -- strips, lists, status ---------------------------------------------------------------
  function organName(id) {
    const o = S.info.organs.find((c) => c.id === id);
    return o ? o.name.replaceAll("_", " ") : `organ ${id}`;
  }
  function organColour(id) {
    const o = S.info.organs.find((c) => c.id === id);
    return o ? `rgb(${o.colour.join(",")})` : "#ccc";
  }
  const ownKeys = (id) => (S.status && S.status.organ_keys[String(id)]) || [];
  const wholeKeys = () => (S.status && S.status.whole_keys) || [];

  // The key strip's slices for the selected organ: whole-slice keys, the organ's own keys
  // (drawn, corrected or "not here") and the slices that are keys for other organs only.
  function stripKeys() {
    const whole = wholeKeys();
    const organ = ownKeys(S.organ).filter((z) => !whole.includes(z));
    const other = ((S.status && S.status.keys) || []).filter((z) => !whole.includes(z) && !organ.includes(z));
    return { organ: S.organ, whole, own: organ, other };
  }

  function uncertaintyColour(u, low, top) {
    if (u === null || u === undefined) return "#333";
    const t = top > low ? Math.min(1, Math.max(0, (u - low) / (top - low))) : 0;
    return `rgb(${Math.round(60 + 195 * t)},${Math.round(200 - 150 * t)},70)`;
  }

  function drawStrip(canvas, paint) {
    const d = S.info.shape[0];
    canvas.width = Math.max(d, canvas.clientWidth || d);
    const ctx = canvas.getContext("2d");
    const cell = canvas.width / d;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    paint(ctx, cell, canvas.height);
    ctx.strokeStyle = "#ff4040";
    ctx.lineWidth = 2;
    ctx.strokeRect(S.z * cell - 1, 1, Math.max(2, cell) + 2, canvas.height - 2);
  }

  function drawStrips() {
    if (!S.status) return;
    const st = S.status;
    drawStrip($("#key-strip"), (ctx, cell, h) => {
      for (let z = 0; z < st.up_to_date.length; z++) {
        if (st.up_to_date[z] === "1") { ctx.fillStyle = "#3a4250"; ctx.fillRect(z * cell, h * 0.6, cell, h * 0.4); }
      }
      const keys = stripKeys();
      ctx.fillStyle = "#8a90a0";  // other organs' keys: a short tick
      for (const k of keys.other) ctx.fillRect(k * cell, 0, Math.max(2, cell), h * 0.3);
      ctx.fillStyle = "#ffffff";  // whole-slice keys: full height, white
      for (const k of keys.whole) ctx.fillRect(k * cell, 0, Math.max(2, cell), h);
      ctx.fillStyle = organColour(S.organ);  // the organ's own keys: full height, its colour
      for (const k of keys.own) ctx.fillRect(k * cell, 0, Math.max(2, cell), h);
    });
    drawStrip($("#uncertainty-strip"), (ctx, cell, h) => {
      // green = the least, red = the most uncertain propagated slice (keys are 0: green)
      const done = st.uncertainty.filter((u, z) => u !== null && !st.keys.includes(z));
      const low = done.length ? Math.min(...done) : 0;
      const top = done.length ? Math.max(...done) : 0;
      st.uncertainty.forEach((u, z) => {
        ctx.fillStyle = st.keys.includes(z) ? uncertaintyColour(0, 0, 1) : uncertaintyColour(u, low, top);
        ctx.fillRect(z * cell, 0, cell + 0.5, h);
      });
    });
  }

  function stripClick(canvas) {
    canvas.addEventListener("click", (e) => {
      const rect = canvas.getBoundingClientRect();
      goTo(Math.floor((e.clientX - rect.left) / rect.width * S.info.shape[0]));
    });
  }

  function updatePositions() {
    const [d, h, w] = S.info.shape;
    const key = keyNote(S.z);
    views.axial.root.querySelector(".pos").textContent = `z ${S.z} / ${d - 1}${key}`;
    views.coronal.root.querySelector(".pos").textContent = `y ${S.y} / ${h - 1}`;
    views.sagittal.root.querySelector(".pos").textContent = `x ${S.x} / ${w - 1}`;
  }

  // " (key: whole slice)", " (key: liver)" (the selected organ first), or "" on no key
  function keyNote(z) {
    if (!S.status) return "";
    if (wholeKeys().includes(z)) return " (key: whole slice)";
    const organs = S.info.organs.map((o) => o.id).filter((id) => ownKeys(id).includes(z));
    if (!organs.length) return "";
    organs.sort((a, b) => (b === S.organ) - (a === S.organ));
    return ` (key: ${organs.map(organName).join(", ")})`;
  }

  // "Check next" for the selected organ; for any organ while it has no key (no entry)
  function renderCheckNext() {
    const st = S.status;
    if (!st) return;
    const own = st.check_next_organ[String(S.organ)];
    const slices = own !== undefined ? own : st.check_next;
    $("#check-next-organ").textContent = own !== undefined ? `for ${organName(S.organ)}` : "for any organ";
    $("#check-next-note").textContent = own === undefined
      ? `${organName(S.organ)} has no key yet: slices to check for any organ`
      : (own.length ? "" : `nothing to check for ${organName(S.organ)}`);
    const list = $("#check-next");
    list.dataset.organ = own !== undefined ? String(S.organ) : "any";
    list.replaceChildren(...slices.map((z) => {
      const li = document.createElement("li");
      const u = st.uncertainty[z];
      li.dataset.z = z;
      li.textContent = `slice ${z}` + (u === null || u === undefined ? "" : ` (uncertainty ${u.toFixed(2)})`);
      li.addEventListener("click", () => goTo(z));
      return li;
    }));
  }

  function applyStatus(st) {
    if (!st) return;
    S.status = st;
    S.revisions = st.revisions;
    const total = st.revisions.reduce((a, b) => a + b, 0);
    const changed = total !== S.revisionTotal;
    S.revisionTotal = total;
    const p = st.progress;
    $("#progress").max = Math.max(1, p.total);
    $("#progress").value = p.done;
    const pending = [...st.up_to_date].filter((c) => c === "0").length;
    let text = st.running ? `propagating: ${p.done} / ${p.total} slices`
      : (p.seconds !== null ? `done: ${p.done} slices in ${p.seconds} s` : "");
    if (!st.running && pending) text += (text ? "; " : "") + `${pending} slices out of date`;
    if (!st.keys.length) text = "draw on a slice, then propagate";
    $("#progress-text").textContent = text;
    $("#propagate").disabled = st.running || !st.keys.length;
    $("#stop").disabled = !st.running;
    $("#undo").disabled = !st.undo;
    $("#undo-count").textContent = st.undo ? `${st.undo} step(s)` : "";
    renderCheckNext();
    if (st.error && st.error !== S.lastError) showError(new Error(st.error));
    if (st.last_save) showSave(st.last_save);
    document.body.dataset.running = st.running ? "1" : "0";
    if (changed) refreshAll(); else { drawStrips(); updatePositions(); }
  }

  function showSave(saved) {
    const warn = saved.pending_slices ? ` (${saved.pending_slices} slices were not propagated)` : "";
    const seg = saved.dicom_seg ? ` and ${saved.dicom_seg}` : "";
    $("#save-path").textContent = `saved ${saved.at} in ${saved.seconds} s to ${saved.path}${seg}${warn}`;
  }

  async function poll() {
    try { applyStatus(await statusCall("status")); } catch (err) { showError(err); }
    setTimeout(poll, S.status && S.status.running ? 300 : 2000);
  }

  // -- controls ----------------------------------------------------------------------------
  function buildOrgans() {
    const list = $("#organs");
    list.replaceChildren(...S.info.organs.map((o) => {
      const li = document.createElement("li");
      li.dataset.id = o.id;
      const sw = document.createElement("span");
      sw.className = "swatch";
      sw.style.background = `rgb(${o.colour.join(",")})`;
      li.append(sw, document.createTextNode(`${o.id} ${o.name.replaceAll("_", " ")}`));
      li.addEventListener("click", () => selectOrgan(o.id));
      return li;
    }));
    selectOrgan(S.info.organs[0].id);
  }
  function selectOrgan(id) {
    S.organ = id;
    document.querySelectorAll("#organs li").forEach((li) => li.classList.toggle("active", +li.dataset.id === id));
    $("#organ-end").textContent = `${organName(id)} not here`;
    $("#key-strip-organ").textContent = organName(id);
    renderCheckNext();
    drawStrips();
    if (views.axial) updatePositions();
  }
  function selectTool(tool) {
    S.tool = tool;
    document.querySelectorAll("#tools button").forEach((b) => b.classList.toggle("active", b.dataset.tool === tool));
  }
  function setRadius(r) {
    S.radius = Math.min(40, Math.max(0, r));
    $("#size").value = S.radius; $("#size-value").textContent = S.radius;
  }

  function acceptSlice() {
    act(statusCall("accept", { z: S.z }).then(applyStatus));
  }
  // the selected organ is absent on the current axial slice (an empty key for it alone)
  function organEnd() {
    act(statusCall("organ_end", { z: S.z, label: S.organ }).then(applyStatus));
  }

  function bindControls() {
    document.querySelectorAll("#tools button").forEach((b) => b.addEventListener("click", () => selectTool(b.dataset.tool)));
    $("#size").addEventListener("input", (e) => setRadius(+e.target.value));
    const win = $("#window");
    win.replaceChildren(...S.info.windows.map((w) => new Option(w, w)));
    win.addEventListener("change", () => { S.window = win.value; refreshAll(); });
    $("#undo").addEventListener("click", () => act(statusCall("undo", {}).then(applyStatus)));
    $("#accept").addEventListener("click", acceptSlice);
    $("#organ-end").addEventListener("click", organEnd);
    $("#propagate").addEventListener("click", () => act(statusCall("propagate", {}).then(applyStatus)));
    $("#stop").addEventListener("click", () => act(statusCall("stop", {}).then(applyStatus)));
    $("#save").addEventListener("click", async () => {
      $("#save-path").textContent = "saving...";
      const saved = await act(json("save", {}));
      if (saved) showSave(saved); else $("#save-path").textContent = "";
    });
    $("#banner-close").addEventListener("click", () => { $("#banner").hidden = true; });
    $("#banner-discard").addEventListener("click", async () => {
      const st = await act(statusCall("discard", {}));
      if (st) { $("#banner").hidden = true; applyStatus(st); refreshAll(); }
    });
    stripClick($("#key-strip"));
    stripClick($("#uncertainty-strip"));
    window.addEventListener("resize", drawStrips);
    document.addEventListener("keydown", (e) => {
      if (e.target.tagName === "INPUT" || e.target.tagName === "SELECT") return;
      if ((e.ctrlKey || e.metaKey) && e.key === "z") { e.preventDefault(); act(statusCall("undo", {}).then(applyStatus)); return; }
      const keys = { ArrowUp: 1, PageUp: 5, ArrowDown: -1, PageDown: -5 };
      if (e.key in keys) { e.preventDefault(); step("axial", keys[e.key]); }
      else if (e.key === "b") selectTool("brush");
      else if (e.key === "e") selectTool("eraser");
      else if (e.key === "f") selectTool("fill");
      else if (e.key === "k") acceptSlice();
      else if ((e.key === "x" || e.key === "X") && !e.ctrlKey && !e.metaKey && !e.altKey) organEnd();
      else if (e.key === "+" || e.key === "]") setRadius(S.radius + 1);
      else if (e.key === "-" || e.key === "[") setRadius(S.radius - 1);
    });
  }

  async function start() {
    try {
      S.info = await json("info");
    } catch (err) { showError(err); return; }
    const [d, h, w] = S.info.shape;
    S.z = Math.floor(d / 2); S.y = Math.floor(h / 2); S.x = Math.floor(w / 2);
    lut = new Uint8ClampedArray(256 * 4);
    for (const o of S.info.organs) lut.set([...o.colour, 110], 4 * o.id);
    $("#scan").textContent = `${S.info.scan}: ${w}x${h}x${d}, ${S.info.engine} engine, schema ${S.info.schema}`;
    ["axial", "coronal", "sagittal"].forEach((name) => layout(makeView(name)));
    bindAxialDrawing(views.axial);
    bindSideClicks(views.coronal);
    bindSideClicks(views.sagittal);
    buildOrgans();
    selectTool("brush");
    bindControls();
    if (S.info.resumed) {
      showBanner(`Resumed ${S.info.resumed} key slice(s) autosaved in ${S.info.sidecar}.`, false, true);
    }
    const st = await act(statusCall("status"));
    if (st) {
      if (st.keys.length) S.z = st.keys[0];
      applyStatus(st);
    }
    refreshAll();
    poll();
    S.ready = true;
    document.body.dataset.ready = "1";
  }

  window.labeler = { state: S, views, goTo, call, json, selectOrgan, stripKeys };
  start();
})();
