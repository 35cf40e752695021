// The two npm ComfyUI clients' documented flows against `kiln serve`
// (driven by test_npm_clients.py, which starts the server):
//   comfy-ui-client: its README flow (connect, getImages, saveImages, disconnect)
//     and every other method of ComfyUIClient;
//   @saintno/comfyui-sdk: its README "Basic Usage" (ComfyApi.init + PromptBuilder +
//     CallWrapper with preview, progress, output and finished callbacks) and the
//     ComfyApi methods of its API reference that a core ComfyUI serves.
// Prints one "ok"/"FAIL" line per call and exits 1 on any failure.
//
//   node clients.cjs HOST:PORT WEB_DIR WORKFLOW.api.json OUT_DIR
"use strict";
const {createRequire} = require("module");
const fs = require("fs");
const path = require("path");

const [host, webDir, workflowPath, outDir] = process.argv.slice(2);
const need = createRequire(path.join(webDir, "package.json")); // web/node_modules, where tools/setup.sh installs
const {ComfyUIClient} = need("comfy-ui-client");
const sdk = need("@saintno/comfyui-sdk");

let failures = 0;
function check(cond, what) {
  console.log((cond ? "ok   " : "FAIL ") + what);
  if (!cond) failures++;
  return cond;
}
async function call(what, fn, test = () => true) {
  try {
    const v = await fn();
    let ok = false;
    try { ok = test(v); } catch (e) { ok = false; }
    check(ok, what + (ok ? "" : ": " + JSON.stringify(v)?.slice(0, 300)));
    return v;
  } catch (e) {
    check(false, what + ": threw " + (e && e.message ? e.message : e).toString().slice(0, 300));
    return undefined;
  }
}
const withTimeout = (p, ms, what) =>
  Promise.race([p, new Promise((_, rej) => setTimeout(() => rej(new Error(what + " timed out")), ms))]);

// A 64x64 RGBA PNG (an upload and a mask).
function png(alpha) {
  const zlib = require("zlib");
  const w = 64, h = 64, rows = [];
  for (let y = 0; y < h; y++) {
    rows.push(0);
    for (let x = 0; x < w; x++) rows.push(x * 4, y * 4, 128, alpha(x, y));
  }
  const crcTable = Array.from({length: 256}, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = (buf) => {
    let c = 0xffffffff;
    for (const b of buf) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type, data) => {
    const len = Buffer.alloc(4), tc = Buffer.concat([Buffer.from(type), data]), c = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    c.writeUInt32BE(crc(tc));
    return Buffer.concat([len, tc, c]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr.set([8, 6, 0, 0, 0], 8);
  return Buffer.concat([Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]), chunk("IHDR", ihdr),
    chunk("IDAT", zlib.deflateSync(Buffer.from(rows))), chunk("IEND", Buffer.alloc(0))]);
}

async function comfyUiClient(prompt) {
  const client = new ComfyUIClient(host, "kiln-npm-comfy-ui-client");
  await call("comfy-ui-client connect", () => withTimeout(client.connect(), 10000, "connect"));
  await call("comfy-ui-client getEmbeddings", () => client.getEmbeddings(), Array.isArray);
  await call("comfy-ui-client getExtensions", () => client.getExtensions(), Array.isArray);
  await call("comfy-ui-client getSystemStats", () => client.getSystemStats(), (s) => s.system && s.devices);
  await call("comfy-ui-client getObjectInfo(KSampler)", () => client.getObjectInfo("KSampler"), (o) => o.KSampler);
  await call("comfy-ui-client getPrompt", () => client.getPrompt(), (p) => p.exec_info);
  await call("comfy-ui-client getQueue", () => client.getQueue(), (q) => Array.isArray(q.queue_pending));
  await call("comfy-ui-client uploadImage", () => client.uploadImage(png(() => 255), "npm_client.png", true),
    (r) => r.name === "npm_client.png" && r.type === "input");
  await call("comfy-ui-client uploadMask", () => client.uploadMask(png((x) => (x < 32 ? 0 : 255)), "npm_client_mask.png",
    {filename: "npm_client.png", subfolder: "", type: "input"}, true), (r) => r.name === "npm_client_mask.png");
  await call("comfy-ui-client viewMetadata(vae, ae.safetensors)", () => client.viewMetadata("vae", "ae.safetensors"),
    (m) => typeof m === "object" && m.format === "pt");
  const images = await call("comfy-ui-client getImages (README flow)", () => withTimeout(client.getImages(prompt), 300000,
    "getImages"), (r) => Object.values(r).flat().length === 1);
  if (images) {
    await call("comfy-ui-client saveImages", async () => {
      await client.saveImages(images, outDir);
      return fs.readdirSync(outDir);
    }, (files) => files.some((f) => f.endsWith(".png")));
  }
  const history = await call("comfy-ui-client getHistory", () => client.getHistory(), (h) => Object.keys(h).length >= 1);
  await call("comfy-ui-client interrupt", () => client.interrupt());
  await call("comfy-ui-client editHistory(delete)", () => client.editHistory({delete: Object.keys(history || {})}));
  await call("comfy-ui-client history emptied", () => client.getHistory(), (h) => Object.keys(h).length === 0);
  await call("comfy-ui-client disconnect", () => client.disconnect());
}

async function comfyUiSdk(promptJson) {
  const {ComfyApi, CallWrapper, PromptBuilder} = sdk;
  const seed = () => Math.floor(Math.random() * 2 ** 48); // the README's seed() helper, absent from 0.3.1's exports
  const api = await call("sdk ComfyApi.init().waitForReady()", () =>
    withTimeout(new ComfyApi("http://" + host, "kiln-npm-sdk").init(5, 500).waitForReady(), 20000, "init"), (a) => a);
  if (!api) return;
  // The README's basic usage, on the bundled Qwen-Image workflow.
  const workflow = new PromptBuilder(promptJson, ["positive", "seed", "step", "width", "height"], ["images"])
    .setInputNode("positive", "6.inputs.text")
    .setInputNode("seed", "3.inputs.seed")
    .setInputNode("step", "3.inputs.steps")
    .setInputNode("width", "58.inputs.width")
    .setInputNode("height", "58.inputs.height")
    .setOutputNode("images", "60")
    .input("positive", "a red fox in the snow")
    .input("seed", seed())
    // enough steps to outlast the /prompt reply: the SDK drops progress and
    // previews until it has the prompt id, and 2 tiny steps can finish first
    // on a loaded machine (ComfyUI's own server races the same way)
    .input("step", 12)
    .input("width", 64)
    .input("height", 64);
  let previews = 0, progress = 0, outputs = 0;
  const finished = await call("sdk CallWrapper.run (README flow)", () => withTimeout(new Promise((resolve, reject) => {
    new CallWrapper(api, workflow)
      .onPreview(() => previews++)
      .onProgress(() => progress++)
      .onOutput(() => outputs++)
      .onFinished((data) => resolve(data))
      .onFailed((err) => reject(err))
      .run();
  }), 300000, "run"), (d) => d.images && d.images.images.length === 1);
  check(previews > 0 && progress > 0 && outputs > 0,
    "sdk callbacks: %d previews, %d progress, %d outputs".replace("%d", previews).replace("%d", progress).replace("%d", outputs));
  if (finished) {
    const img = finished.images.images[0];
    await call("sdk getPathImage + getImage", () => api.getImage(img), (b) => b.size > 0 && api.getPathImage(img).includes("/view?"));
  }
  await call("sdk getQueue", () => api.getQueue(), (q) => Array.isArray(q.queue_running));
  await call("sdk getHistories", () => api.getHistories(10), (h) => Object.keys(h).length >= 1);
  await call("sdk getSystemStats", () => api.getSystemStats(), (s) => s.system);
  await call("sdk getExtensions", () => api.getExtensions(), Array.isArray);
  await call("sdk getEmbeddings", () => api.getEmbeddings(), Array.isArray);
  await call("sdk getCheckpoints", () => api.getCheckpoints(), Array.isArray);
  await call("sdk getLoras", () => api.getLoras(), (l) => l.includes("Qwen-Image-Lightning-8steps-V1.0.safetensors"));
  await call("sdk getSamplerInfo", () => api.getSamplerInfo(), (s) => s.sampler[0].includes("euler"));
  await call("sdk getNodeDefs(KSampler)", () => api.getNodeDefs("KSampler"), (d) => d.KSampler);
  await call("sdk getUserConfig", () => api.getUserConfig(), (u) => u.storage === "server");
  await call("sdk storeSettings", () => api.storeSettings({"Kiln.Test": 1, "Comfy.Other": "x"}));
  await call("sdk storeSetting", () => api.storeSetting("Kiln.Test", 2));
  await call("sdk getSettings", () => api.getSettings(), (s) => s["Kiln.Test"] === 2 && s["Comfy.Other"] === "x");
  await call("sdk getSetting", () => api.getSetting("Kiln.Test"), (v) => v === 2);
  await call("sdk uploadImage", () => api.uploadImage(png(() => 255), "sdk.png", {override: true}), (r) => r && r.info.filename === "sdk.png");
  await call("sdk uploadMask", () => api.uploadMask(png((x) => (x < 32 ? 0 : 255)), {filename: "sdk.png", subfolder: "", type: "input"}),
    (r) => r && r.info.filename);
  await call("sdk storeUserData", () => api.storeUserData("workflows/sdk.json", {nodes: []}), (r) => r.status === 200);
  await call("sdk listUserData", () => api.listUserData("workflows", true), (l) => l.includes("sdk.json"));
  await call("sdk getUserData", async () => (await api.getUserData("workflows/sdk.json")).json(), (d) => Array.isArray(d.nodes));
  await call("sdk moveUserData", async () => (await api.moveUserData("workflows/sdk.json", "workflows/moved.json")).status, (s) => s === 200);
  await call("sdk deleteUserData", () => api.deleteUserData("workflows/moved.json"));
  await call("sdk getModelFolders", () => api.getModelFolders(), (f) => f.some((x) => x.name === "vae"));
  await call("sdk getModelFiles(vae)", () => api.getModelFiles("vae"), (f) => f.some((x) => x.name === "ae.safetensors"));
  await call("sdk getViewMetadata(vae, ae.safetensors)", () => api.getViewMetadata("vae", "ae.safetensors"), (m) => m.format === "pt");
  await call("sdk freeMemory", () => api.freeMemory(true, true), (r) => r === true);
  await call("sdk interrupt", () => api.interrupt());
  api.destroy();
}

(async () => {
  const prompt = JSON.parse(fs.readFileSync(workflowPath, "utf8"));
  const small = JSON.parse(JSON.stringify(prompt));
  small["58"].inputs.width = small["58"].inputs.height = 64;
  small["3"].inputs.steps = 2;
  await comfyUiClient(small);
  await comfyUiSdk(prompt);
  console.log(failures + " failure(s)");
  process.exit(failures ? 1 : 0);
})().catch((e) => {
  console.log("FAIL unexpected: " + (e && e.stack ? e.stack : e));
  process.exit(1);
});
