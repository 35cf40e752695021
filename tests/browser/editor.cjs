// The graph editor end to end in headless Chromium (puppeteer-core), against a
// running `kiln serve` (test_browser.py starts it):
//   load a UI-format workflow through the file input, change widgets, queue,
//   wait for the image in the gallery and at least one latent preview frame,
//   then load the rendered PNG back through the file input and find the graph
//   that was queued; a bad file name shows its error on the failing node.
// Screenshots before and after go to OUT_DIR. Prints ok/FAIL lines, exits 1 on a failure.
//
//   node editor.cjs BASE_URL WEB_DIR CHROMIUM WORKFLOW.ui.json OUT_DIR
"use strict";
const {createRequire} = require("module");
const fs = require("fs");
const path = require("path");

const [base, webDir, chromium, workflowPath, outDir] = process.argv.slice(2);
const puppeteer = createRequire(path.join(webDir, "package.json"))("puppeteer-core");

let failures = 0;
function check(cond, what) {
  console.log((cond ? "ok   " : "FAIL ") + what);
  if (!cond) failures++;
  return cond;
}

// The parts of a UI graph that define what runs: nodes (type, mode, widget values) and links.
function essence(g) {
  const nodes = {};
  for (const n of g.nodes || []) nodes[n.id] = {type: n.type, mode: n.mode || 0, widgets_values: n.widgets_values};
  const links = (g.links || []).map((l) => (Array.isArray(l) ? l : [l.id, l.origin_id, l.origin_slot, l.target_id, l.target_slot, l.type]))
    .map((l) => l.join(",")).sort();
  return JSON.stringify({nodes, links});
}

(async () => {
  const browser = await puppeteer.launch({executablePath: chromium, headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--no-first-run"], defaultViewport: {width: 1400, height: 900}});
  try {
    const page = await browser.newPage();
    const pageErrors = [];
    page.on("pageerror", (e) => pageErrors.push(e.message));
    await page.goto(base + "/", {waitUntil: "load"});
    await page.waitForFunction("window.kiln && window.kiln.ready", {timeout: 60000});
    check(await page.evaluate(() => Object.keys(kiln.objectInfo).length >= 20),
      "the editor built its node classes from /object_info");
    const combo = await page.evaluate(() => {
      const n = kiln.graph._nodes.find((x) => x.type === "UNETLoader");
      return n && n.widgets[0].options.values;
    });
    check(Array.isArray(combo) && combo.includes("qwen_image_fp8_e4m3fn.safetensors"),
      "UNETLoader's combo lists the model files the server enumerated: " + JSON.stringify(combo));

    // 1. open the UI workflow through the file input
    const input = await page.$("#file");
    await input.uploadFile(workflowPath);
    await page.waitForFunction((name) => kiln.loadedName === name, {timeout: 20000}, path.basename(workflowPath));
    const loaded = await page.evaluate(() => kiln.graph._nodes.length);
    check(loaded > 5, "the workflow opened by file input: " + loaded + " nodes");
    await page.screenshot({path: path.join(outDir, "editor_before.png")});

    // 2. change widgets: the prompt text and the step count
    await page.evaluate(() => {
      const text = kiln.graph.getNodeById(6).widgets.find((w) => w.name === "text");
      text.value = "a kiln test fox in the snow";
      const steps = kiln.graph.getNodeById(3).widgets.find((w) => w.name === "steps");
      steps.value = 3;
      kiln.canvas.setDirty(true, true);
    });

    // 3. a file name that is not there: the error shows on its node and input
    const bad = await page.evaluate(async () => {
      const w = kiln.graph.getNodeById(37).widgets.find((x) => x.name === "unet_name");
      const keep = w.value;
      w.value = "no_such_model.safetensors";
      document.getElementById("queue-btn").click();
      for (let i = 0; i < 100 && !kiln.nodeErrors["37"]; i++) await new Promise((r) => setTimeout(r, 100));
      const errors = kiln.nodeErrors["37"];
      const shown = document.getElementById("error").textContent;
      w.value = keep;
      return {errors, shown};
    });
    check(bad.errors && bad.errors.some((e) => e.startsWith("unet_name: Value not in list")) && /#37 UNETLoader/.test(bad.shown),
      "a bad value is shown on the failing node and input: " + JSON.stringify(bad));

    // 4. queue, then wait for the image in the gallery and a preview frame
    const seedBefore = await page.evaluate(() => kiln.graph.getNodeById(3).widgets[0].value);
    await page.click("#queue-btn");
    await page.waitForFunction(() => {
      const img = document.querySelector("#gallery img");
      return img && img.complete && img.naturalWidth > 0;
    }, {timeout: 300000});
    const result = await page.evaluate(() => {
      const img = document.querySelector("#gallery img");
      return {w: img.naturalWidth, h: img.naturalHeight, src: img.src, caption: img.nextSibling.textContent,
        previews: kiln.previewFrames, seedAfter: kiln.graph.getNodeById(3).widgets[0].value,
        queuedSeed: kiln.lastQueued.nodes.find((n) => n.id === 3).widgets_values[0], error: document.getElementById("error").textContent};
    });
    check(result.w === 256 && result.h === 256, "the rendered image is in the gallery: " + result.w + "x" + result.h);
    check(result.caption === "a kiln test fox in the snow", "the gallery shows the image's prompt: " + result.caption);
    check(result.previews >= 1, "latent preview frames arrived: " + result.previews);
    check(result.queuedSeed === seedBefore && result.seedAfter !== seedBefore,
      "control_after_generate randomized the seed after queueing (" + seedBefore + " -> " + result.seedAfter + ")");
    await page.waitForFunction(() => !kiln.running, {timeout: 60000});
    await page.screenshot({path: path.join(outDir, "editor_after.png")});

    // 5. load the rendered PNG back: the same graph as queued
    const png = Buffer.from(await (await fetch(result.src)).arrayBuffer());
    const pngPath = path.join(outDir, "rendered.png");
    fs.writeFileSync(pngPath, png);
    await page.evaluate(() => { kiln.graph.clear(); kiln.loadedName = null; });
    await input.uploadFile(pngPath);
    await page.waitForFunction(() => kiln.loadedName === "rendered.png", {timeout: 20000});
    const back = await page.evaluate(() => ({now: kiln.graph.serialize(), queued: kiln.lastQueued}));
    check(essence(back.now) === essence(back.queued), "the rendered PNG loads back as the graph that was queued");
    const text = back.now.nodes.find((n) => n.id === 6).widgets_values[0];
    check(text === "a kiln test fox in the snow", "the PNG's graph holds the edited widget: " + text);
    check(pageErrors.length === 0, "no uncaught page errors: " + JSON.stringify(pageErrors));
  } finally {
    await browser.close();
  }
  console.log(failures + " failure(s)");
  process.exit(failures ? 1 : 0);
})().catch((e) => {
  console.log("FAIL unexpected: " + (e && e.stack ? e.stack : e));
  process.exit(1);
});
