// The unio page: a client of the server's own API (GET /v1/tasks, POST /v1/{task}); nothing from
// any other host. What it draws comes from the record's fields (boxes, box, mask, depth_png,
// image_png, text, label), not from task names, so a task another package adds is drawn too.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const SIDE = 448;                          // long side of the drawn image, in canvas pixels
  const PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#0f9aa8", "#f032e6", "#9a6324",
                   "#808000", "#000075"];
  const REGION = "#ffd400";                  // the box given as input (describe_region, inpaint ...)
  const INPUT_LABELS = {question: "Question", expression: "Referring expression", text: "Text",
                        box: "Box: x1, y1, x2, y2 in pixels (or drag on the image)"};
  const state = {tasks: [], samples: [], image: null, values: {}, token: sessionStorage.getItem("unio-token") || "",
                 shown: null, busy: false};

  // ---------------------------------------------------------------- talking to the server
  async function api(path, init = {}) {
    const headers = new Headers(init.headers || {});
    if (state.token) headers.set("Authorization", "Bearer " + state.token);
    let res;
    try {
      res = await fetch(path, {...init, headers});
    } catch (e) {
      throw Object.assign(new Error(`the server did not answer (${e.message}); is unio serve still running?`), {status: 0});
    }
    const text = await res.text();
    let body = null;
    try { body = JSON.parse(text); } catch (e) { body = null; }
    if (!res.ok) {
      if (res.status === 401) $("token-row").hidden = false;
      const message = body && typeof body.error === "string" ? body.error : `HTTP ${res.status}: ${text.slice(0, 300)}`;
      throw Object.assign(new Error(message), {status: res.status});
    }
    return body;
  }

  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  function setState(name, status) {
    document.body.dataset.state = name;
    if (status !== undefined) $("status").textContent = status;
  }

  function showError(message) {
    $("error").textContent = message;
    $("error").hidden = false;
  }

  function clearError() {
    $("error").textContent = "";
    $("error").hidden = true;
  }

  async function loadTasks() {
    setState("loading", "loading the model's tasks…");
    for (let tries = 0; ; tries++) {
      try {
        const body = await api("v1/tasks");
        state.tasks = body.tasks;
        break;
      } catch (e) {
        if (e.status === 503 && tries < 300) { await sleep(1000); continue; }   // the model is still loading
        showError(e.status === 401 ? `${e.message} (enter it in the Token field)` : e.message);
        setState("error", "");
        return;
      }
    }
    const select = $("task");
    const previous = select.value;
    select.replaceChildren(...state.tasks.map((t) => new Option(t.name, t.name)));
    const preferred = ["detect", previous].find((n) => state.tasks.some((t) => t.name === n));
    if (preferred) select.value = preferred;
    clearError();
    renderTask();
    setState("idle", "");
    api("ready").then((r) => { if (r && r.model) $("model").textContent = `model: ${r.model}`; }).catch(() => {});
  }

  async function loadSamples() {
    try {
      state.samples = (await api("ui/samples")).samples;
    } catch (e) {
      return;                                // the upload still works
    }
    $("samples").replaceChildren(...state.samples.map((s, i) => {
      const b = document.createElement("button");
      b.type = "button";
      b.dataset.sample = String(i);
      b.setAttribute("aria-pressed", "false");
      b.title = `${s.name}: ${s.alt}`;
      const img = document.createElement("img");
      img.src = s.image;
      img.alt = `${s.name}: ${s.alt}`;
      b.append(img);
      b.addEventListener("click", () => pickSample(i));
      return b;
    }));
  }

  // ---------------------------------------------------------------- the form
  const currentTask = () => state.tasks.find((t) => t.name === $("task").value);

  function renderTask() {
    const t = currentTask();
    if (!t) return;
    $("image-fields").hidden = !t.needs_image;
    $("task-prompt").textContent = t.prompt ? `Prompt: “${t.prompt}”` : "";
    $("inputs").replaceChildren(...t.inputs.map(inputRow));
    const own = new Set(t.task_options || []);
    const ordered = Object.keys(t.options).sort((a, b) => (a === "prompt") - (b === "prompt"));
    $("task-options-title").textContent = `Options of ${t.name}`;
    $("task-options").replaceChildren(...ordered.filter((n) => own.has(n) || n === "prompt")
      .map((n) => optionRow(n, t.options[n], (t.model_defaults || {})[n], n === "prompt" ? t.prompt : null)));
    $("options").replaceChildren(...ordered.filter((n) => !own.has(n) && n !== "prompt")
      .map((n) => optionRow(n, t.options[n], (t.model_defaults || {})[n])));
    if (!state.shown || state.shown.task.name !== t.name) {
      state.shown = null;
      clearResults();
      showPreview();
    }
  }

  function inputRow(name) {
    const row = document.createElement("div");
    row.className = "row";
    const label = document.createElement("label");
    label.htmlFor = `input-${name}`;
    label.textContent = INPUT_LABELS[name] || name;
    const input = document.createElement("input");
    input.type = "text";
    input.id = `input-${name}`;
    input.name = name;
    input.dataset.input = name;
    input.required = true;
    input.value = state.values[name] !== undefined ? state.values[name] : "";
    if (name === "box") input.placeholder = "e.g. 10, 12, 40, 44";
    input.addEventListener("input", () => { state.values[name] = input.value; if (name === "box") showPreview(); });
    row.append(label, input);
    return row;
  }

  function optionRow(name, spec, modelDefault, placeholder) {
    const row = document.createElement("div");
    row.className = "row";
    const id = `option-${name}`;
    const label = document.createElement("label");
    label.htmlFor = id;
    label.textContent = name.replace(/_/g, " ");
    let field;
    const dflt = modelDefault !== undefined ? modelDefault : spec.default;
    if (spec.type === "bool" || spec.choices) {
      field = document.createElement("select");
      const values = spec.type === "bool" ? ["true", "false"] : spec.choices.map(String);
      field.append(new Option(dflt !== undefined ? `default (${dflt})` : "default", ""),
                   ...values.map((v) => new Option(v, v)));
    } else {
      field = document.createElement("input");
      field.type = spec.type === "int" || spec.type === "float" ? "number" : "text";
      if (field.type === "number") {
        field.step = spec.type === "int" ? "1" : "any";
        if (spec.min !== undefined) field.min = String(spec.min);
        if (spec.max !== undefined) field.max = String(spec.max);
      }
      field.placeholder = placeholder || (dflt !== undefined ? `default: ${Array.isArray(dflt) ? dflt.join(", ") : dflt}`
                                                             : spec.type === "labels" ? "a, b, c" : spec.type === "size" ? "width, height" : "");
    }
    field.id = id;
    field.dataset.option = name;
    field.dataset.type = spec.type;
    row.append(label, field);
    if (spec.doc) {
      const hint = document.createElement("p");
      hint.className = "hint";
      hint.id = `${id}-doc`;
      hint.textContent = spec.doc;
      field.setAttribute("aria-describedby", hint.id);
      row.append(hint);
    }
    return row;
  }

  function readOptions() {
    const out = {};
    for (const el of document.querySelectorAll("[data-option]")) {
      const raw = el.value.trim(), type = el.dataset.type;
      if (!raw) continue;
      let v = raw;
      if (type === "bool") v = raw === "true";
      else if (type === "int" || type === "float") v = Number(raw);
      else if (type === "labels") v = raw.split(",").map((s) => s.trim()).filter(Boolean);
      else if (type === "size") v = raw.split(/[\s,x×]+/).filter(Boolean).map(Number);
      out[el.dataset.option] = v;
    }
    return out;
  }

  // ---------------------------------------------------------------- the image
  async function setImage(blob, name) {
    let bitmap = null;
    try { bitmap = await createImageBitmap(blob); } catch (e) { bitmap = null; }  // the server has the last word
    state.image = {blob, name, bitmap};
    state.shown = null;
    clearResults();
    showPreview();
  }

  async function pickSample(i) {
    const s = state.samples[i];
    document.querySelectorAll("#samples button").forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.sample === String(i))));
    $("file").value = "";
    state.values = {...state.values, ...Object.fromEntries(Object.entries(s.inputs).map(([k, v]) => [k, Array.isArray(v) ? v.join(", ") : v]))};
    document.querySelectorAll("[data-input]").forEach((el) => { if (state.values[el.dataset.input] !== undefined) el.value = state.values[el.dataset.input]; });
    const blob = await (await fetch(s.image)).blob();
    await setImage(blob, `${s.name.replace(/\W+/g, "-")}.png`);
  }

  function parseBox(text) {
    const v = String(text || "").replace(/[[\]()]/g, " ").split(/[\s,]+/).filter(Boolean).map(Number);
    return v.length === 4 && v.every(Number.isFinite) ? v : null;
  }

  // ---------------------------------------------------------------- drawing
  function fit(canvas, w, h) {
    const scale = SIDE / Math.max(w, h);
    canvas.width = Math.max(1, Math.round(w * scale));
    canvas.height = Math.max(1, Math.round(h * scale));
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = scale < 2;   // small images stay crisp, large ones smooth
    return {ctx, scale};
  }

  function showPreview() {
    const view = $("view"), t = currentTask();
    $("side-figure").hidden = true;
    if (!state.image || (t && !t.needs_image)) {
      const {ctx} = fit(view, SIDE, SIDE);
      ctx.clearRect(0, 0, view.width, view.height);
      view.dataset.drawn = "";
      $("view-caption").textContent = t && !t.needs_image ? "The picture will appear here." : "Upload an image or pick a sample.";
      return;
    }
    const bm = state.image.bitmap;
    if (!bm) {
      const {ctx} = fit(view, SIDE, SIDE);
      ctx.clearRect(0, 0, view.width, view.height);
      view.dataset.drawn = "";
      $("view-caption").textContent = `${state.image.name}: this browser cannot show the file; the server will say whether it reads it.`;
      return;
    }
    const {ctx, scale} = fit(view, bm.width, bm.height);
    ctx.drawImage(bm, 0, 0, view.width, view.height);
    const box = t && t.inputs.includes("box") ? parseBox(state.values.box) : null;
    if (box) strokeBox(ctx, box, scale, REGION, null, true);
    view.dataset.drawn = "image";
    $("view-caption").textContent = `${state.image.name}, ${bm.width}×${bm.height}` + (t && t.inputs.includes("box") ? " — drag to set the box" : "");
  }

  function labelColor(label) {
    let h = 0;
    for (const c of String(label)) h = (h * 31 + c.codePointAt(0)) >>> 0;
    return PALETTE[h % PALETTE.length];
  }

  function strokeBox(ctx, box, scale, color, text, dashed) {
    const [x1, y1, x2, y2] = box.map((v) => v * scale);
    ctx.save();
    ctx.lineWidth = 3;
    ctx.strokeStyle = color;
    if (dashed) ctx.setLineDash([8, 5]);
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    ctx.restore();
    if (!text) return;
    ctx.save();
    ctx.font = "600 13px system-ui, sans-serif";
    const w = ctx.measureText(text).width + 8, h = 18;
    const ty = y1 - h >= 0 ? y1 - h : y1;
    ctx.fillStyle = color;
    ctx.fillRect(x1 - 1.5, ty, w, h);
    ctx.fillStyle = "#fff";
    ctx.textBaseline = "middle";
    ctx.fillText(text, x1 + 2.5, ty + h / 2 + 0.5);
    ctx.restore();
  }

  // COCO's compressed RLE (pycocotools' string form): column-major runs, background first.
  function decodeRle(rle) {
    const [h, w] = rle.size, s = rle.counts, counts = [];
    for (let p = 0; p < s.length;) {
      let x = 0, k = 0, more = true;
      while (more) {
        const c = s.charCodeAt(p) - 48;
        x += (c & 0x1f) * 2 ** (5 * k);
        more = (c & 0x20) !== 0;
        p++; k++;
        if (!more && (c & 0x10)) x -= 2 ** (5 * k);
      }
      if (counts.length > 2) x += counts[counts.length - 2];
      counts.push(x);
    }
    const mask = new Uint8Array(h * w);      // row-major
    let i = 0, on = 0;
    for (const n of counts) {
      if (on) for (let j = i; j < i + n && j < h * w; j++) mask[(j % h) * w + Math.floor(j / h)] = 1;
      i += n;
      on ^= 1;
    }
    return {mask, h, w};
  }

  function drawMask(ctx, rle, canvas) {
    const {mask, h, w} = decodeRle(rle);
    const layer = document.createElement("canvas");
    layer.width = w;
    layer.height = h;
    const lctx = layer.getContext("2d"), img = lctx.createImageData(w, h);
    let area = 0;
    for (let j = 0; j < mask.length; j++) {
      if (!mask[j]) continue;
      area++;
      img.data.set([255, 0, 80, 140], 4 * j);
    }
    lctx.putImageData(img, 0, 0);
    ctx.save();
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(layer, 0, 0, canvas.width, canvas.height);
    ctx.restore();
    return area;
  }

  function loadPicture(b64) {
    return new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = () => reject(new Error("the answer's picture could not be shown"));
      img.src = "data:image/png;base64," + b64;
    });
  }

  function clearResults() {
    $("results").replaceChildren();
    $("answer").textContent = "";
    $("record").textContent = "";
    $("record-box").hidden = true;
    $("min-score-row").hidden = true;
    $("view").dataset.boxes = "0";
    delete $("view").dataset.maskArea;
  }

  function resultItem(text, color, data) {
    const li = document.createElement("li");
    if (color) {
      const sw = document.createElement("span");
      sw.className = "swatch";
      sw.style.background = color;
      sw.setAttribute("aria-hidden", "true");
      li.append(sw);
      li.dataset.color = color;
    }
    li.append(text);
    Object.assign(li.dataset, data || {});
    return li;
  }

  const fmt = (v) => (typeof v === "number" ? v.toFixed(2) : "n/a");
  const fmtBox = (b) => `(${b.map((v) => Math.round(v)).join(", ")})`;

  async function drawResult() {
    const shown = state.shown;
    if (!shown) return;
    const {rec, sent, task} = shown, view = $("view");
    clearResults();
    const picture = rec.image_png ? await loadPicture(rec.image_png) : null;
    const base = task.needs_image ? state.image && state.image.bitmap : picture;
    const w = base ? base.width : rec.width || SIDE, h = base ? base.height : rec.height || SIDE;
    const {ctx, scale} = fit(view, w, h);
    if (base) ctx.drawImage(base, 0, 0, view.width, view.height);
    else ctx.clearRect(0, 0, view.width, view.height);
    const list = $("results"), captions = [];
    if (sent.box) strokeBox(ctx, sent.box, scale, REGION, null, true);
    if (rec.mask && rec.mask.counts !== undefined) {
      const area = drawMask(ctx, rec.mask, view);
      view.dataset.maskArea = String(area);
      list.append(resultItem(`mask: ${area} pixels`, "#ff0050", {area: String(area)}));
    }
    let boxes = 0;
    if (Array.isArray(rec.boxes)) {
      $("min-score-row").hidden = !Array.isArray(rec.scores);
      const min = Number($("min-score").value);
      const order = rec.boxes.map((b, i) => i).sort((a, b) => (rec.scores ? rec.scores[a] - rec.scores[b] : 0));
      const drawn = order.filter((i) => !rec.scores || rec.scores[i] === null || rec.scores[i] >= min);
      for (const i of drawn) {
        const label = rec.labels ? rec.labels[i] : "", score = rec.scores ? rec.scores[i] : null;
        strokeBox(ctx, rec.boxes[i], scale, labelColor(label), `${label} ${score === null ? "" : fmt(score)}`.trim());
      }
      for (const i of drawn.slice().reverse()) {
        const label = rec.labels ? rec.labels[i] : "", score = rec.scores ? rec.scores[i] : null;
        list.append(resultItem(`${label} ${fmt(score)} ${fmtBox(rec.boxes[i])}`, labelColor(label),
                               {label, score: String(score), box: rec.boxes[i].join(",")}));
      }
      boxes = drawn.length;
      const hidden = rec.boxes.length - drawn.length;
      captions.push(`${rec.boxes.length} box${rec.boxes.length === 1 ? "" : "es"}` + (hidden ? `, ${hidden} under ${fmt(min)} not drawn` : ""));
    } else if (Array.isArray(rec.box) && !picture) {
      const text = rec.expression || rec.label || rec.text || "";
      strokeBox(ctx, rec.box, scale, PALETTE[0], text);
      list.append(resultItem(`${text} ${fmtBox(rec.box)}`, PALETTE[0], {label: text, box: rec.box.join(",")}));
      boxes = 1;
    } else if (rec.box === null) {
      list.append(resultItem("no box found"));
    }
    view.dataset.boxes = String(boxes);
    if (rec.label !== undefined) {
      $("answer").textContent = `${rec.label}` + (typeof rec.score === "number" ? ` (score ${fmt(rec.score)})` : "");
    } else if (typeof rec.text === "string" && !picture && !Array.isArray(rec.box)) {
      $("answer").textContent = rec.text || "(empty answer)";
    }
    const side = $("side"), sideFigure = $("side-figure");
    sideFigure.hidden = true;
    if (rec.depth_png || (picture && task.needs_image)) {
      const img = rec.depth_png ? await loadPicture(rec.depth_png) : picture;
      const {ctx: sctx, scale: sscale} = fit(side, img.width, img.height);
      sctx.drawImage(img, 0, 0, side.width, side.height);
      if (sent.box && picture) strokeBox(sctx, sent.box, sscale, REGION, null, true);
      $("side-caption").textContent = rec.depth_png
        ? `depth map, ${fmt(rec.min)} (dark, near) to ${fmt(rec.max)} (yellow, far)`
        : `the answer's picture, ${img.width}×${img.height}`;
      sideFigure.hidden = false;
      side.dataset.drawn = rec.depth_png ? "depth" : "picture";
    }
    captions.unshift(picture && !task.needs_image ? `the answer's picture, ${w}×${h}` : `${state.image ? state.image.name : ""}, ${w}×${h}`);
    $("view-caption").textContent = captions.join(" — ");
    view.dataset.drawn = task.name;
    const full = JSON.stringify(rec, null, 2);
    $("record").textContent = JSON.stringify(rec, (k, v) => (typeof v === "string" && v.length > 160
      ? `${v.slice(0, 40)}… (${v.length} characters; the download has them all)` : v), 2)
      .replace(/\[\s+([^[\]{}]*?)\s+\]/g, (m, inner) => `[${inner.split(/,\s+/).join(", ")}]`);  // short lists on one line
    const link = $("download");
    if (link.href) URL.revokeObjectURL(link.href);
    link.href = URL.createObjectURL(new Blob([full], {type: "application/json"}));
    link.download = `${task.name}.json`;
    $("record-box").hidden = false;
  }

  // ---------------------------------------------------------------- running a task
  async function run(event) {
    event.preventDefault();
    if (state.busy) return;
    const t = currentTask();
    if (!t) return;
    clearError();
    const form = new FormData(), sent = {};
    if (t.needs_image) {
      if (!state.image) { showError(`${t.name} needs an image: upload one or pick a sample`); setState("error"); return; }
      form.append("image", state.image.blob, state.image.name);
    }
    for (const name of t.inputs) {
      const value = (state.values[name] || "").trim();
      if (value) form.append(name, value);
      if (name === "box") sent.box = parseBox(value);
    }
    form.append("options", JSON.stringify(readOptions()));
    state.busy = true;
    $("run").disabled = true;
    setState("busy", `running ${t.name}…`);
    const t0 = performance.now();
    try {
      const rec = await api(`v1/${encodeURIComponent(t.name)}`, {method: "POST", body: form});
      state.shown = {rec, sent, task: t};
      await drawResult();
      setState("done", `${t.name}: ${Math.round(performance.now() - t0)} ms`);
    } catch (e) {
      state.shown = null;
      clearResults();
      showError(e.message);
      setState("error", "");
    } finally {
      state.busy = false;
      $("run").disabled = false;
    }
  }

  // dragging on the image sets the box input
  function bindDrag() {
    const view = $("view");
    let start = null;
    const point = (e) => {
      const r = view.getBoundingClientRect(), bm = state.image.bitmap;
      const x = ((e.clientX - r.left) / r.width) * bm.width, y = ((e.clientY - r.top) / r.height) * bm.height;
      return [Math.min(Math.max(x, 0), bm.width), Math.min(Math.max(y, 0), bm.height)];
    };
    const boxed = () => { const t = currentTask(); return t && t.inputs.includes("box") && state.image && state.image.bitmap; };
    view.addEventListener("pointerdown", (e) => {
      if (!boxed()) return;
      start = point(e);
      view.setPointerCapture(e.pointerId);
    });
    view.addEventListener("pointermove", (e) => {
      if (!start) return;
      const [x, y] = point(e);
      const box = [Math.min(start[0], x), Math.min(start[1], y), Math.max(start[0], x), Math.max(start[1], y)].map(Math.round);
      state.values.box = box.join(", ");
      const input = $("input-box");
      if (input) input.value = state.values.box;
      state.shown = null;
      showPreview();
    });
    const end = () => { start = null; };
    view.addEventListener("pointerup", end);
    view.addEventListener("pointercancel", end);
  }

  function bind() {
    $("form").addEventListener("submit", run);
    $("task").addEventListener("change", () => { clearError(); renderTask(); });
    $("file").addEventListener("change", () => {
      const f = $("file").files[0];
      if (!f) return;
      document.querySelectorAll("#samples button").forEach((b) => b.setAttribute("aria-pressed", "false"));
      setImage(f, f.name);
    });
    $("min-score").addEventListener("input", () => {
      $("min-score-value").textContent = Number($("min-score").value).toFixed(2);
      drawResult();
    });
    $("token").value = state.token;
    $("token").addEventListener("change", () => {
      state.token = $("token").value.trim();
      sessionStorage.setItem("unio-token", state.token);
      loadTasks();
    });
    bindDrag();
  }

  bind();
  loadSamples();
  loadTasks();
})();
