// Kiln's browser UI: a thin ComfyUI API client (POST /api/prompt, /ws progress,
// /api/view images). No build step, no dependencies.
"use strict";

const BUNDLED = ["qwen_image_t2i.api.json", "qwen_image_i2i.api.json", "qwen_image_t2i.ui.json",
  "flux_dev_t2i.api.json", "flux_schnell_t2i.api.json", "flux_dev_t2i.ui.json", "flux_schnell_t2i.ui.json",
  "z_image_turbo_t2i.api.json", "z_image_turbo_t2i.ui.json", "qwen_image_edit.api.json", "qwen_image_edit.ui.json"];
const $ = (id) => document.getElementById(id);
const clientId = sessionStorage.getItem("kiln.clientId") || crypto.randomUUID().replace(/-/g, "");
sessionStorage.setItem("kiln.clientId", clientId);
let mine = new Set(); // prompt ids this page queued

function log(text) {
  const li = document.createElement("li");
  li.textContent = new Date().toLocaleTimeString() + "  " + text;
  $("log").prepend(li);
  while ($("log").children.length > 200) $("log").lastChild.remove();
}

function showError(text) {
  $("error").hidden = !text;
  $("error").textContent = text || "";
}

function setProgress(value, max) {
  $("bar").style.width = max ? (100 * value / max) + "%" : "0";
  $("step").textContent = max ? value + " / " + max : "";
}

async function loadBundled(name) {
  const r = await fetch("/workflows/" + encodeURIComponent(name));
  if (!r.ok) throw new Error("cannot load " + name + ": HTTP " + r.status);
  $("prompt").value = JSON.stringify(await r.json(), null, 2);
  renderWidgets();
}

// Form fields for the inputs people change most; each edit is written back into
// the prompt JSON, which stays the one source of truth (and editable by hand).
const WIDGETS = {
  CLIPTextEncode: ["text"],
  CLIPTextEncodeFlux: ["clip_l", "t5xxl", "guidance"],
  FluxGuidance: ["guidance"],
  ModelSamplingAuraFlow: ["shift"],
  TextEncodeQwenImageEdit: ["prompt"],
  TextEncodeQwenImageEditPlus: ["prompt"],
  CFGNorm: ["strength"],
  LoadImage: ["image"],
  KSampler: ["seed", "steps", "cfg", "sampler_name", "scheduler", "denoise"],
  KSamplerAdvanced: ["noise_seed", "steps", "cfg"],
  RandomNoise: ["noise_seed"],
  BasicScheduler: ["steps", "scheduler"],
  CFGGuider: ["cfg"],
  EmptyLatentImage: ["width", "height", "batch_size"],
  EmptySD3LatentImage: ["width", "height", "batch_size"],
  LoraLoader: ["lora_name", "strength_model", "strength_clip"],
  LoraLoaderModelOnly: ["lora_name", "strength_model"],
};
const PROMPT_WIDGETS = new Set(["text", "clip_l", "t5xxl", "prompt"]); // shown as wide text areas

function renderWidgets() {
  const box = $("widgets");
  box.textContent = "";
  let prompt;
  try {
    prompt = JSON.parse($("prompt").value);
  } catch (e) {
    return; // the JSON error shows when queueing
  }
  if (prompt.nodes) return; // UI format: edit it as JSON
  for (const [id, node] of Object.entries(prompt)) {
    const inputs = node.inputs || {};
    const keys = (WIDGETS[node.class_type] || []).filter((k) => k in inputs && !Array.isArray(inputs[k]));
    if (!keys.length) continue;
    const set = document.createElement("fieldset");
    const legend = document.createElement("legend");
    legend.textContent = "#" + id + " " + ((node._meta && node._meta.title) || node.class_type);
    set.append(legend);
    for (const key of keys) {
      const isNumber = typeof inputs[key] === "number";
      const field = document.createElement(PROMPT_WIDGETS.has(key) ? "textarea" : "input");
      if (isNumber) Object.assign(field, {type: "number", step: "any"});
      if (key === "lora_name") field.setAttribute("list", "loras");
      field.value = inputs[key];
      field.oninput = () => {
        const p = JSON.parse($("prompt").value);
        p[id].inputs[key] = isNumber ? Number(field.value) : field.value;
        $("prompt").value = JSON.stringify(p, null, 2);
      };
      const label = document.createElement("label");
      if (PROMPT_WIDGETS.has(key)) label.className = "wide";
      label.append(key + " ", field);
      set.append(label);
    }
    box.append(set);
  }
}

// The LoRA files the server enumerated, offered in lora_name fields.
async function loadLoraNames() {
  const r = await fetch("/api/models/loras");
  if (!r.ok) return;
  for (const name of await r.json()) $("loras").append(new Option(name, name));
}

// Earlier results from /history, newest last as they are listed.
async function loadGallery() {
  const r = await fetch("/api/history?max_items=24");
  if (!r.ok) return;
  for (const entry of Object.values(await r.json()))
    for (const out of Object.values(entry.outputs || {})) for (const img of out.images || []) addImage(img);
}

function currentPrompt() {
  const prompt = JSON.parse($("prompt").value);
  const seed = $("seed").value;
  if (seed !== "" && !prompt.nodes) { // API format: every constant seed input
    for (const node of Object.values(prompt)) {
      for (const key of ["seed", "noise_seed"]) {
        if (node.inputs && key in node.inputs && !Array.isArray(node.inputs[key])) node.inputs[key] = Number(seed);
      }
    }
  }
  return prompt;
}

function describeError(body) {
  if (!body || !body.error) return JSON.stringify(body);
  const lines = [body.error.message + (body.error.details ? ": " + body.error.details : "")];
  for (const [id, ne] of Object.entries(body.node_errors || {})) {
    for (const e of ne.errors) lines.push("node " + id + " (" + ne.class_type + "): " + e.message + ": " + e.details);
  }
  return lines.join("\n");
}

async function queuePrompt() {
  showError("");
  let prompt;
  try {
    prompt = currentPrompt();
  } catch (e) {
    showError("The prompt is not valid JSON: " + e.message);
    return;
  }
  const r = await fetch("/api/prompt", {
    method: "POST",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify({prompt, client_id: clientId}),
  });
  const body = await r.json().catch(() => null);
  if (!r.ok) {
    showError(describeError(body));
    return;
  }
  mine.add(body.prompt_id);
  log("queued " + body.prompt_id + " (#" + body.number + ")");
}

function addImage(img) {
  const q = new URLSearchParams({filename: img.filename, subfolder: img.subfolder, type: img.type, rand: Math.random()});
  const el = document.createElement("img");
  el.src = "/api/view?" + q;
  el.alt = img.filename;
  el.title = img.filename;
  $("gallery").prepend(el);
}

const handlers = {
  status(d) {
    $("queue").textContent = "queue: " + d.status.exec_info.queue_remaining;
  },
  execution_start(d) {
    setProgress(0, 0);
    log("started " + d.prompt_id);
  },
  execution_cached(d) {
    if (d.nodes.length) log("cached: " + d.nodes.join(", "));
  },
  executing(d) {
    $("node").textContent = d.node === null ? "" : "running node " + d.node;
    if (d.node === null) setProgress(0, 0);
  },
  progress(d) {
    setProgress(d.value, d.max);
  },
  executed(d) {
    for (const img of (d.output && d.output.images) || []) addImage(img);
  },
  execution_success(d) {
    log("done " + d.prompt_id);
  },
  execution_error(d) {
    showError("node " + d.node_id + " (" + d.node_type + "): " + d.exception_message);
    log("error in " + d.prompt_id);
  },
  execution_interrupted(d) {
    log("interrupted " + d.prompt_id);
  },
};

function connect() {
  const proto = location.protocol === "https:" ? "wss://" : "ws://";
  const ws = new WebSocket(proto + location.host + "/ws?clientId=" + clientId);
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
    if (typeof ev.data !== "string") return; // binary preview frames: not sent by Kiln yet
    const msg = JSON.parse(ev.data);
    if (handlers[msg.type]) handlers[msg.type](msg.data);
  };
}

async function upload(file) {
  const form = new FormData();
  form.append("image", file);
  const r = await fetch("/api/upload/image", {method: "POST", body: form});
  if (!r.ok) {
    showError("upload failed: HTTP " + r.status);
    return;
  }
  const body = await r.json();
  const name = body.subfolder ? body.subfolder + "/" + body.name : body.name;
  $("uploaded").textContent = "uploaded as " + name;
  try { // point every LoadImage of the prompt at it
    const prompt = JSON.parse($("prompt").value);
    for (const node of Object.values(prompt)) if (node.class_type === "LoadImage") node.inputs.image = name;
    $("prompt").value = JSON.stringify(prompt, null, 2);
  } catch (e) { /* not API JSON: leave it */ }
}

async function main() {
  for (const name of BUNDLED) $("bundled").add(new Option(name, name));
  $("bundled").onchange = () => loadBundled($("bundled").value).catch((e) => showError(e.message));
  $("file").onchange = async () => {
    const f = $("file").files[0];
    if (f) $("prompt").value = await f.text();
    renderWidgets();
  };
  $("prompt").onchange = renderWidgets;
  $("upload").onchange = () => $("upload").files[0] && upload($("upload").files[0]);
  $("run").onclick = () => queuePrompt().catch((e) => showError(e.message));
  $("interrupt").onclick = () => fetch("/api/interrupt", {method: "POST"});
  $("clear").onclick = () => fetch("/api/queue", {method: "POST", body: JSON.stringify({clear: true})});
  connect();
  loadLoraNames().catch(() => {});
  loadGallery().catch(() => {});
  try {
    await loadBundled(BUNDLED[0]);
  } catch (e) {
    showError(e.message);
  }
  // ?autorun=1 queues the loaded workflow once the socket is up (the browser test uses it).
  if (new URLSearchParams(location.search).get("autorun")) {
    const wait = () => ($("conn").className === "pill on" ? queuePrompt() : setTimeout(wait, 100));
    wait();
  }
}

main();
