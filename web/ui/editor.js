// Kiln's graph editor: ComfyUI's node graph on @comfyorg/litegraph (the library
// ComfyUI's own front end draws with), built from the server's /object_info.
// It talks to `kiln serve` only through ComfyUI's API: /api/prompt, /ws,
// /api/queue, /api/history, /api/view, /api/upload/image; plus /kiln/convert
// for "Export (API)" (the server's own UI -> API converter, the one /prompt uses).
import {LGraph, LGraphCanvas, LGraphNode, LiteGraph} from "/vendor/litegraph.es.js";

const $ = (id) => document.getElementById(id);
const TEMPLATES = ["qwen_image_t2i.ui.json", "flux_dev_t2i.ui.json", "flux_schnell_t2i.ui.json",
  "z_image_turbo_t2i.ui.json", "qwen_image_i2i.api.json"];
const CONTROL_VALUES = ["fixed", "increment", "decrement", "randomize"];
const SEED_MAX = 1125899906842624; // what ComfyUI's front end draws random seeds below (2^50)
const WIDGET_TYPES = new Set(["INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"]);

const clientId = sessionStorage.getItem("kiln.clientId") || crypto.randomUUID().replace(/-/g, "");
sessionStorage.setItem("kiln.clientId", clientId);

// Everything the page knows, also reachable as window.kiln (the browser test reads it).
const kiln = {
  objectInfo: {}, graph: null, canvas: null, clientId,
  running: null,        // {promptId, node} while a prompt of this page runs
  nodeErrors: {},       // node id -> [lines], drawn under the node
  progress: {},         // node id -> {value, max, state}
  previewFrames: 0,     // binary preview frames received
  lastQueued: null,     // the UI graph of the last queued prompt, as sent
  queued: new Map(),    // prompt id -> the text prompts of that queue call, for the gallery
};
window.kiln = kiln;

function showError(text) {
  $("error").hidden = !text;
  $("error").textContent = text || "";
}

// ---- node classes from /object_info -----------------------------------------------------

// [type, options] of an input spec, with V3's ["COMBO", {options: [...]}] and V1's [[...]] both as COMBO.
function specOf(spec) {
  const [type, opts = {}] = spec;
  if (Array.isArray(type)) return {type: "COMBO", opts: {...opts, values: type}};
  if (type === "COMBO") return {type, opts: {...opts, values: opts.options || []}};
  return {type, opts};
}

function addWidgetFor(node, name, type, opts) {
  if (type === "INT" || type === "FLOAT") {
    const step = opts.step ?? (type === "INT" ? 1 : 0.01);
    node.addWidget("number", name, opts.default ?? 0, () => {}, {
      min: opts.min, max: opts.max, step2: step, round: type === "INT" ? 1 : opts.round,
      precision: type === "INT" ? 0 : Math.max(0, Math.min(6, -Math.floor(Math.log10(step)))),
    });
    // ComfyUI's value control: after every seed, and wherever the schema asks for one
    if (type === "INT" && (opts.control_after_generate || name === "seed" || name === "noise_seed")) {
      const ctrl = node.addWidget("combo", "control_after_generate", "randomize", () => {}, {values: CONTROL_VALUES});
      ctrl.controls = name;
    }
  } else if (type === "STRING") {
    node.addWidget("text", name, opts.default ?? "", () => {}, {multiline: !!opts.multiline});
  } else if (type === "BOOLEAN") {
    node.addWidget("toggle", name, opts.default ?? false, () => {}, {on: opts.label_on, off: opts.label_off});
  } else if (type === "COMBO") {
    const values = opts.values || [];
    node.addWidget("combo", name, opts.default ?? values[0] ?? "", () => {}, {values});
  }
  if (opts.image_upload) { // LoadImage: the upload button holds the value "image" in widgets_values
    node.addWidget("button", "upload", "image", () => uploadInto(node, name), {});
  }
}

function registerClass(name, info) {
  class ComfyNode extends LGraphNode {
    static title = info.display_name || name;
    static comfyClass = name;
    constructor(title) {
      super(title || ComfyNode.title);
      this.serialize_widgets = true;
      const sections = [["required", info.input?.required || {}], ["optional", info.input?.optional || {}]];
      for (const [section, specs] of sections) {
        const order = info.input_order?.[section] || Object.keys(specs);
        for (const input of order) {
          if (!specs[input]) continue;
          const {type, opts} = specOf(specs[input]);
          if (WIDGET_TYPES.has(type) && !opts.forceInput) addWidgetFor(this, input, type, opts);
          else this.addInput(input, type, section === "optional" ? {shape: 7} : undefined);
        }
      }
      (info.output || []).forEach((t, i) => this.addOutput(info.output_name?.[i] || t, t));
      this.size = this.computeSize();
      this.size[0] = Math.max(this.size[0], 260);
    }
    onDrawForeground(ctx) { drawStatus(this, ctx); }
  }
  ComfyNode.category = info.category;
  LiteGraph.registerNodeType(name, ComfyNode);
}

// The UI-only notes of ComfyUI's graphs, so templates show them.
function registerNotes() {
  for (const name of ["Note", "MarkdownNote"]) {
    class NoteNode extends LGraphNode {
      static title = name;
      constructor(title) {
        super(title || name);
        this.serialize_widgets = true;
        this.addWidget("text", "text", "", () => {}, {multiline: true});
        this.size = [300, 80];
      }
    }
    LiteGraph.registerNodeType(name, NoteNode);
  }
}

// Progress bar, latent preview and errors, drawn on the node they belong to.
function drawStatus(node, ctx) {
  const id = String(node.id);
  const p = kiln.progress[id];
  if (p && p.state === "running" && p.max) {
    ctx.fillStyle = "#2a5db0";
    ctx.fillRect(0, -LiteGraph.NODE_TITLE_HEIGHT, node.size[0] * Math.min(1, p.value / p.max), 4);
  }
  if (node.previewImage && kiln.running?.node === id) {
    const w = node.size[0], img = node.previewImage;
    const h = Math.min(w, (w * img.naturalHeight) / Math.max(1, img.naturalWidth));
    ctx.drawImage(img, 0, node.size[1] + 4, w, h);
  }
  const lines = kiln.nodeErrors[id];
  if (lines) {
    ctx.strokeStyle = "#f44";
    ctx.lineWidth = 2;
    ctx.strokeRect(-2, -LiteGraph.NODE_TITLE_HEIGHT - 2, node.size[0] + 4, node.size[1] + LiteGraph.NODE_TITLE_HEIGHT + 4);
    ctx.fillStyle = "#f88";
    ctx.font = "12px sans-serif";
    lines.slice(0, 4).forEach((l, i) => ctx.fillText(l.slice(0, 80), 0, node.size[1] + 16 + 14 * i));
  }
}

async function loadObjectInfo() {
  const r = await fetch("/api/object_info");
  if (!r.ok) throw new Error("GET /api/object_info: HTTP " + r.status);
  kiln.objectInfo = await r.json();
  for (const [name, info] of Object.entries(kiln.objectInfo)) registerClass(name, info);
  registerNotes();
}

// ---- loading workflows -------------------------------------------------------------------

function clearStatus() {
  kiln.nodeErrors = {};
  kiln.progress = {};
  showError("");
}

// The whole graph in view after a load.
function fitView() {
  // from positions and sizes: a node's boundingRect is only computed when it is drawn
  const b = [Infinity, Infinity, -Infinity, -Infinity];
  for (const n of kiln.graph._nodes) {
    b[0] = Math.min(b[0], n.pos[0]);
    b[1] = Math.min(b[1], n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT);
    b[2] = Math.max(b[2], n.pos[0] + n.size[0]);
    b[3] = Math.max(b[3], n.pos[1] + n.size[1]);
  }
  for (const g of kiln.graph._groups || []) {
    const [x, y, w, h] = g._bounding || g.bounding || [0, 0, 0, 0];
    b[0] = Math.min(b[0], x);
    b[1] = Math.min(b[1], y);
    b[2] = Math.max(b[2], x + w);
    b[3] = Math.max(b[3], y + h);
  }
  const bounds = isFinite(b[0]) ? [b[0] - 20, b[1] - 20, b[2] - b[0] + 40, b[3] - b[1] + 40] : null;
  if (bounds) kiln.canvas.ds.fitToBounds(bounds, {zoom: 0.95});
  kiln.canvas.setDirty(true, true);
}

function loadUI(workflow) {
  clearStatus();
  kiln.graph.configure(workflow);
  fitView();
}

// An API prompt has no positions: nodes are laid out by their depth in the graph.
function loadAPI(prompt) {
  clearStatus();
  const g = kiln.graph;
  g.clear();
  const depth = {}, made = {};
  const depthOf = (id, seen = new Set()) => {
    if (depth[id] !== undefined) return depth[id];
    if (seen.has(id)) return 0;
    seen.add(id);
    let d = 0;
    for (const v of Object.values(prompt[id]?.inputs || {}))
      if (Array.isArray(v) && v.length === 2 && prompt[v[0]]) d = Math.max(d, depthOf(String(v[0]), seen) + 1);
    return (depth[id] = d);
  };
  const rows = {};
  for (const [id, n] of Object.entries(prompt)) {
    const node = LiteGraph.createNode(n.class_type);
    if (!node) {
      showError("This build has no node class " + n.class_type + " (node " + id + ")");
      continue;
    }
    const d = depthOf(id);
    rows[d] = (rows[d] || 0) + 1;
    node.id = Number(id) || undefined;
    if (n._meta?.title) node.title = n._meta.title;
    for (const w of node.widgets || []) {
      const v = n.inputs?.[w.name];
      if (v !== undefined && !Array.isArray(v)) w.value = v;
      if (w.name === "control_after_generate") w.value = "fixed"; // an API file's seeds are meant as written
    }
    node.pos = [40 + d * 330, 40 + (rows[d] - 1) * 230];
    g.add(node);
    made[id] = node;
  }
  for (const [id, n] of Object.entries(prompt)) {
    for (const [name, v] of Object.entries(n.inputs || {})) {
      if (!Array.isArray(v) || v.length !== 2 || !made[id] || !made[v[0]]) continue;
      const slot = made[id].findInputSlot(name);
      if (slot >= 0) made[v[0]].connect(v[1], made[id], slot);
    }
  }
  fitView();
}

function loadAny(doc) {
  if (doc && Array.isArray(doc.nodes)) loadUI(doc);
  else if (doc && typeof doc === "object") loadAPI(doc);
  else throw new Error("not a ComfyUI workflow");
}

// The tEXt/iTXt chunks of a PNG as {key: text}: where ComfyUI and Kiln keep "workflow" and "prompt".
function pngTexts(buf) {
  const bytes = new Uint8Array(buf), view = new DataView(buf), texts = {};
  const latin1 = new TextDecoder("latin1"), utf8 = new TextDecoder("utf-8");
  if (bytes.length < 8 || bytes[1] !== 0x50 || bytes[2] !== 0x4e || bytes[3] !== 0x47) throw new Error("not a PNG file");
  for (let at = 8; at + 8 <= bytes.length;) {
    const len = view.getUint32(at), type = latin1.decode(bytes.subarray(at + 4, at + 8));
    const data = bytes.subarray(at + 8, at + 8 + len);
    if (type === "tEXt" || type === "iTXt") {
      const nul = data.indexOf(0);
      const key = latin1.decode(data.subarray(0, nul));
      if (type === "tEXt") texts[key] = latin1.decode(data.subarray(nul + 1));
      else if (data[nul + 1] === 0) { // uncompressed iTXt: skip language and translated keyword
        let p = nul + 3;
        p = data.indexOf(0, p) + 1;
        p = data.indexOf(0, p) + 1;
        texts[key] = utf8.decode(data.subarray(p));
      }
    }
    if (type === "IEND") break;
    at += 12 + len;
  }
  return texts;
}

async function openFile(file) {
  try {
    if (file.type === "image/png" || /\.png$/i.test(file.name)) {
      const texts = pngTexts(await file.arrayBuffer());
      if (texts.workflow) loadUI(JSON.parse(texts.workflow));
      else if (texts.prompt) loadAPI(JSON.parse(texts.prompt));
      else throw new Error(file.name + " holds no ComfyUI workflow");
    } else {
      loadAny(JSON.parse(await file.text()));
    }
    kiln.loadedName = file.name;
  } catch (e) {
    showError("Cannot open " + file.name + ": " + e.message);
  }
}

async function loadTemplate(name) {
  const r = await fetch("/workflows/" + encodeURIComponent(name));
  if (!r.ok) throw new Error("template " + name + ": HTTP " + r.status);
  loadAny(await r.json());
  kiln.loadedName = name;
}

// ---- saving and exporting ------------------------------------------------------------------

function download(name, text) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([text], {type: "application/json"}));
  a.download = name;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

const baseName = () => (kiln.loadedName || "workflow").replace(/\.(ui|api)?\.?(json|png)$/i, "").replace(/\.$/, "");

async function exportAPI() {
  const r = await fetch("/kiln/convert", {method: "POST", body: JSON.stringify(kiln.graph.serialize())});
  const body = await r.json();
  if (!r.ok) return showErrors(body);
  download(baseName() + ".api.json", JSON.stringify(body, null, 2));
}

// ---- queueing --------------------------------------------------------------------------------

// control_after_generate acts after the prompt is queued, as in ComfyUI: the
// queued (and saved) seed is the one shown when Queue was pressed.
function applyValueControls() {
  for (const node of kiln.graph._nodes) {
    for (const ctrl of node.widgets || []) {
      if (ctrl.name !== "control_after_generate" || !ctrl.controls) continue;
      const w = node.widgets.find((x) => x.name === ctrl.controls);
      if (!w) continue;
      const max = Math.min(w.options.max ?? SEED_MAX, SEED_MAX), min = w.options.min ?? 0;
      if (ctrl.value === "increment") w.value = Math.min(max, w.value + 1);
      else if (ctrl.value === "decrement") w.value = Math.max(min, w.value - 1);
      else if (ctrl.value === "randomize") w.value = min + Math.floor(Math.random() * (max - min));
    }
  }
  kiln.canvas.setDirty(true, true);
}

function promptTexts(workflow) {
  const out = [];
  for (const n of workflow.nodes || [])
    if (/TextEncode/.test(n.type) && n.mode !== 2 && n.mode !== 4)
      for (const v of n.widgets_values || []) if (typeof v === "string" && v.trim()) out.push(v);
  return out;
}

function showErrors(body) {
  kiln.nodeErrors = {};
  const lines = [];
  if (body?.error) lines.push(body.error.message + (body.error.details ? ": " + body.error.details : ""));
  for (const [id, ne] of Object.entries(body?.node_errors || {})) {
    const node = id.split(":")[0]; // an id inside a subgraph shows on its instance
    kiln.nodeErrors[node] = (ne.errors || []).map((e) =>
      (e.extra_info?.input_name ? e.extra_info.input_name + ": " : "") + e.message + (e.details ? " (" + e.details + ")" : ""));
    for (const l of kiln.nodeErrors[node]) lines.push("#" + id + " " + ne.class_type + ": " + l);
  }
  showError(lines.join("\n") || JSON.stringify(body));
  kiln.canvas.setDirty(true, true);
}

async function queuePrompt() {
  clearStatus();
  const workflow = kiln.graph.serialize();
  // Kiln converts a UI graph in "prompt" itself (the conversion `kiln convert` prints);
  // extra_pnginfo.workflow goes into the PNG as ComfyUI's front end sends it.
  const r = await fetch("/api/prompt", {
    method: "POST",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify({client_id: clientId, prompt: workflow,
      extra_data: {extra_pnginfo: {workflow}, preview_method: "auto"}}),
  });
  const body = await r.json().catch(() => null);
  if (!r.ok) return showErrors(body);
  kiln.lastQueued = workflow;
  kiln.queued.set(body.prompt_id, promptTexts(workflow));
  applyValueControls();
  refreshQueue();
}

// ---- queue panel and gallery -----------------------------------------------------------------

async function refreshQueue() {
  const r = await fetch("/api/queue");
  if (!r.ok) return;
  const q = await r.json();
  const list = $("queue-list");
  list.textContent = "";
  const items = [...q.queue_running.map((t) => [t, true]), ...q.queue_pending.sort((a, b) => a[0] - b[0]).map((t) => [t, false])];
  for (const [t, running] of items) {
    const li = document.createElement("li");
    li.className = running ? "running" : "";
    li.append((running ? "▶ " : "#" + t[0] + " ") + t[1].slice(0, 8));
    const b = document.createElement("button");
    b.textContent = "✕";
    b.title = running ? "interrupt" : "remove from the queue";
    b.onclick = () => running
      ? fetch("/api/interrupt", {method: "POST", body: JSON.stringify({prompt_id: t[1]})})
      : fetch("/api/queue", {method: "POST", body: JSON.stringify({delete: [t[1]]})}).then(refreshQueue);
    li.append(b);
    list.append(li);
  }
  $("queue-count").textContent = items.length;
}

function addToGallery(img, texts, workflow) {
  const fig = document.createElement("figure");
  const el = document.createElement("img");
  const q = new URLSearchParams({filename: img.filename, subfolder: img.subfolder, type: img.type});
  el.src = "/api/view?" + q;
  el.alt = img.filename;
  el.dataset.filename = img.filename;
  const cap = document.createElement("figcaption");
  cap.textContent = (texts && texts.length ? texts[0] : img.filename);
  cap.title = (texts || []).join("\n");
  fig.append(el, cap);
  // clicking an image loads the graph it was rendered from
  fig.onclick = async () => {
    try {
      const r = await fetch(el.src);
      const t = pngTexts(await r.arrayBuffer());
      if (t.workflow) loadUI(JSON.parse(t.workflow));
      else if (workflow) loadUI(workflow);
      else if (t.prompt) loadAPI(JSON.parse(t.prompt));
    } catch (e) {
      showError("Cannot load " + img.filename + ": " + e.message);
    }
  };
  $("gallery").prepend(fig);
}

async function loadGallery() {
  const r = await fetch("/api/history?max_items=32");
  if (!r.ok) return;
  for (const entry of Object.values(await r.json())) {
    const [, , prompt, extra] = entry.prompt || [];
    const workflow = extra?.extra_pnginfo?.workflow;
    const texts = workflow ? promptTexts(workflow)
      : Object.values(prompt || {}).filter((n) => /TextEncode/.test(n.class_type) && typeof n.inputs?.text === "string")
        .map((n) => n.inputs.text);
    for (const out of Object.values(entry.outputs || {})) for (const img of out.images || []) addToGallery(img, texts, workflow);
  }
}

// ---- the websocket ---------------------------------------------------------------------------

function setProgress(value, max) {
  $("bar").style.width = max ? (100 * value) / max + "%" : "0";
  $("step").textContent = max ? value + " / " + max : "";
}

const handlers = {
  status(d) {
    $("queue-count").textContent = d.status.exec_info.queue_remaining;
    refreshQueue();
  },
  execution_start(d) {
    kiln.running = {promptId: d.prompt_id, node: null};
    setProgress(0, 0);
  },
  executing(d) {
    if (d.node === null) {
      kiln.running = null;
      setProgress(0, 0);
    } else if (kiln.running) {
      kiln.running.node = d.node;
    }
    kiln.canvas.setDirty(true, false);
  },
  progress(d) {
    setProgress(d.value, d.max);
  },
  progress_state(d) {
    for (const [id, s] of Object.entries(d.nodes || {})) kiln.progress[id.split(":")[0]] = s;
    kiln.canvas.setDirty(true, false);
  },
  executed(d) {
    for (const img of d.output?.images || []) addToGallery(img, kiln.queued.get(d.prompt_id), null);
  },
  execution_error(d) {
    kiln.nodeErrors[String(d.node_id).split(":")[0]] = [String(d.exception_message).trim()];
    showError("#" + d.node_id + " " + d.node_type + ": " + d.exception_message);
    kiln.canvas.setDirty(true, false);
  },
  execution_interrupted() {
    showError("interrupted");
  },
};

// Binary frames (big-endian type first): 1 = a preview image after 4 bytes of format, 3 = progress text.
function onBinary(buf) {
  const view = new DataView(buf), type = view.getUint32(0);
  if (type === 1 || type === 4) {
    const skip = type === 1 ? 8 : 8 + view.getUint32(4);
    const mime = type === 1 && view.getUint32(4) === 2 ? "image/png" : "image/jpeg";
    const url = URL.createObjectURL(new Blob([buf.slice(skip)], {type: mime}));
    const img = $("preview");
    const old = img.src;
    img.src = url;
    img.hidden = false;
    if (old.startsWith("blob:")) setTimeout(() => URL.revokeObjectURL(old), 2000);
    kiln.previewFrames++;
    const node = kiln.running?.node && kiln.graph.getNodeById(Number(kiln.running.node.split(":")[0]));
    if (node) {
      const im = new Image();
      im.onload = () => kiln.canvas.setDirty(true, false);
      im.src = url;
      node.previewImage = im;
    }
  }
}

function connect() {
  const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws?clientId=" + clientId);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => {
    $("conn").textContent = "connected";
    $("conn").className = "pill on";
  };
  ws.onclose = () => {
    $("conn").textContent = "offline";
    $("conn").className = "pill off";
    setTimeout(connect, 1000);
  };
  ws.onmessage = (ev) => {
    if (typeof ev.data !== "string") return onBinary(ev.data);
    const msg = JSON.parse(ev.data);
    handlers[msg.type]?.(msg.data);
  };
}

// ---- uploads, drag and drop, start-up --------------------------------------------------------

function uploadInto(node, widgetName) {
  const input = document.createElement("input");
  input.type = "file";
  input.accept = "image/*";
  input.onchange = async () => {
    const form = new FormData();
    form.append("image", input.files[0]);
    const r = await fetch("/api/upload/image", {method: "POST", body: form});
    if (!r.ok) return showError("upload failed: HTTP " + r.status);
    const b = await r.json();
    const w = node.widgets.find((x) => x.name === widgetName);
    const name = b.subfolder ? b.subfolder + "/" + b.name : b.name;
    if (w) {
      if (!w.options.values.includes(name)) w.options.values.push(name);
      w.value = name;
    }
    kiln.canvas.setDirty(true, false);
  };
  input.click();
}

function resize() {
  const c = $("canvas"), box = $("canvas-box");
  c.width = box.clientWidth;
  c.height = box.clientHeight;
  kiln.canvas?.setDirty(true, true);
}

async function main() {
  kiln.graph = new LGraph();
  resize();
  kiln.canvas = new LGraphCanvas($("canvas"), kiln.graph);
  kiln.canvas.show_info = false;
  window.addEventListener("resize", resize);
  try {
    await loadObjectInfo();
  } catch (e) {
    showError(e.message);
  }
  for (const t of TEMPLATES) $("templates").add(new Option(t.replace(/\.(ui|api)\.json$/, ""), t));
  $("templates").onchange = () => $("templates").value && loadTemplate($("templates").value).catch((e) => showError(e.message));
  $("file").onchange = () => $("file").files[0] && openFile($("file").files[0]);
  $("save").onclick = () => download(baseName() + ".json", JSON.stringify(kiln.graph.serialize(), null, 2));
  $("export").onclick = () => exportAPI().catch((e) => showError(e.message));
  $("queue-btn").onclick = () => queuePrompt().catch((e) => showError(e.message));
  $("interrupt").onclick = () => fetch("/api/interrupt", {method: "POST"});
  $("clear").onclick = () => fetch("/api/queue", {method: "POST", body: JSON.stringify({clear: true})}).then(refreshQueue);
  const box = $("canvas-box");
  box.addEventListener("dragover", (e) => { e.preventDefault(); $("drop-hint").hidden = false; });
  box.addEventListener("dragleave", () => { $("drop-hint").hidden = true; });
  box.addEventListener("drop", (e) => {
    e.preventDefault();
    $("drop-hint").hidden = true;
    if (e.dataTransfer.files[0]) openFile(e.dataTransfer.files[0]);
  });
  connect();
  refreshQueue();
  loadGallery().catch(() => {});
  await loadTemplate(TEMPLATES[0]).catch((e) => showError(e.message));
  kiln.ready = true;
}

main();
