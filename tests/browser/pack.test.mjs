// Browser tier: the real ComfyUI server and frontend in Debian's Chromium (playwright-core, no browser download).
// R2MOE_FRONTEND_ROOT=<dir> runs it against another frontend build. Failure screenshots go to output/browser/.
import assert from "node:assert/strict";
import { mkdirSync, readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { after, before, test } from "node:test";
import { launchBrowser, makeRunnable, openApp, packErrors, queueAndWait, REPO, startServer } from "../../scripts/browser/comfy_page.mjs";

const FRONTEND = process.env.R2MOE_FRONTEND_ROOT || undefined;
const VUE_NODES = process.env.R2MOE_VUE_NODES === "1";
const LABEL = (FRONTEND ? path.basename(path.dirname(FRONTEND)) : "pinned") + (VUE_NODES ? "-nodes2" : "");
const SHOTS = path.join(REPO, "output", "browser");
const TEMPLATE_DIR = path.join(REPO, "example_workflows");
const TEMPLATES = readdirSync(TEMPLATE_DIR).filter((f) => f.endsWith(".json")).map((f) => f.slice(0, -5)).sort();
const NODE_IDS = [...new Set([...readdirSync(path.join(REPO, "nodes"))
  .filter((f) => f.endsWith(".py"))
  .flatMap((f) => [...readFileSync(path.join(REPO, "nodes", f), "utf8").matchAll(/node_id="(\w+)"/g)].map((m) => m[1]))])];

let server;
let browser;
let page;

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  server = await startServer({ frontEndRoot: FRONTEND });
  browser = await launchBrowser();
  page = await openApp(browser, server.url, { vueNodes: VUE_NODES });
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

/** Run a check; on failure keep a screenshot of the page. */
async function step(name, body) {
  try {
    await body();
  } catch (err) {
    await page?.screenshot({ path: path.join(SHOTS, `${LABEL}-${name}.png`) }).catch(() => {});
    throw err;
  }
}

/** Double-click the empty canvas until the node search opens: on a busy machine the first click can land before the canvas listens. */
async function openSearch(input) {
  for (let attempt = 1; ; attempt++) {
    await page.keyboard.press("Escape");
    await page.mouse.dblclick(900, 650);
    try {
      await input.waitFor({ timeout: 5_000 });
      return;
    } catch (err) {
      if (attempt === 6) throw err;
    }
  }
}

async function openTemplate(name) {
  await page.keyboard.press("Escape");
  await page.evaluate(() => window.app.extensionManager.command.execute("Comfy.BrowseTemplates"));
  const card = page.getByText(name, { exact: true }).first();
  await card.waitFor({ timeout: 30_000 });
  await card.click();
  await page.waitForFunction((count) => window.app.graph.nodes.length === count,
    JSON.parse(readFileSync(path.join(TEMPLATE_DIR, `${name}.json`), "utf8")).nodes.length, { timeout: 30_000 });
  await page.keyboard.press("Escape");
}

test(`${LABEL}: the page loads the pack's extension with no errors from its scripts`, async () => {
  await step("load", async () => {
    const loaded = await page.evaluate(() => window.app.extensions.some((e) => e.name === "r2moe.nodes"));
    assert.ok(loaded, "extension r2moe.nodes not registered");
    if (VUE_NODES) {
      const rendered = await page.evaluate(() => [document.querySelectorAll("[data-node-id]").length, window.app.graph.nodes.length]);
      assert.ok(rendered[1] > 0 && rendered[0] === rendered[1], `Nodes 2.0 rendered ${rendered[0]} of ${rendered[1]} nodes`);
    }
    assert.deepEqual(packErrors(page), []);
  });
});

test(`${LABEL}: every node of the pack is found by the node search`, async () => {
  await step("search", async () => {
    const names = await page.evaluate((ids) => ids.map((id) => window.LiteGraph.registered_node_types[id]?.title ?? null), NODE_IDS);
    assert.ok(NODE_IDS.length >= 15 && names.every(Boolean), `not registered: ${NODE_IDS.filter((_, i) => !names[i])}`);
    await page.evaluate(() => window.app.graph.clear());
    const input = page.getByPlaceholder(/Search Nodes|Add a node/); // frontend 1.32 / the newer search dialog
    for (const name of names) {
      await openSearch(input);
      await input.fill(name);
      await page.getByText(name, { exact: true }).first().waitFor({ timeout: 10_000 });
      await page.keyboard.press("Escape");
      await input.waitFor({ state: "hidden", timeout: 10_000 });
    }
  });
});

test(`${LABEL}: every node has its help page where the frontend's node help looks for it`, async () => {
  await step("help", async () => {
    const info = await (await fetch(`${server.url}/object_info`)).json();
    for (const id of NODE_IDS) {
      assert.equal(info[id]?.python_module, "custom_nodes.r2moe", id);
      const help = await fetch(`${server.url}/extensions/r2moe/docs/${id}.md`);
      assert.equal(help.status, 200, `${id}.md`);
      assert.ok((await help.text()).startsWith(`# ${info[id].display_name}\n`), `${id}.md title`);
    }
  });
});

test(`${LABEL}: the template browser lists every template with its thumbnail`, async () => {
  await step("template-list", async () => {
    const listed = await (await fetch(`${server.url}/api/workflow_templates`)).json();
    assert.deepEqual([...listed.r2moe].sort(), TEMPLATES);
    for (const name of TEMPLATES) {
      const thumb = await fetch(`${server.url}/api/workflow_templates/r2moe/${name}.jpg`);
      assert.equal(thumb.status, 200, `${name}.jpg`);
    }
  });
});

for (const name of TEMPLATES) {
  test(`${LABEL}: template ${name} opens as a complete graph and runs`, async () => {
    await step(`template-${name}`, async () => {
      await openTemplate(name);
      const missing = await page.evaluate(() =>
        window.app.graph.nodes.filter((n) => n.type !== "MarkdownNote" && !window.LiteGraph.registered_node_types[n.type]).map((n) => n.type));
      assert.deepEqual(missing, []);
      await makeRunnable(page, server);
      const first = await queueAndWait(page);
      assert.equal(first.error, null, JSON.stringify(first.error)?.slice(0, 1500));
      if (name.includes("inspect")) {
        // The gallery (every concept's picture, name and token) reaches its viewer, and the report shown on the
        // node names every concept the server lists for that bank file.
        const prompt = await page.evaluate(async () => (await window.app.graphToPrompt()).output);
        const idOf = (type) => Object.keys(prompt).find((id) => prompt[id].class_type === type);
        const info = idOf("R2MoEBankInfo");
        const viewer = Object.keys(prompt).find((id) => prompt[id].class_type === "PreviewImage"
          && String(prompt[id].inputs.images?.[0]) === info && prompt[id].inputs.images?.[1] === 2);
        assert.ok(viewer, "the template shows the gallery output");
        assert.equal(first.outputs.find((o) => o.node === viewer)?.output?.images?.length, 1, "gallery shown");
        const listed = await (await fetch(`${server.url}/r2moe/concepts`)).json();
        const concepts = listed.banks[prompt[idOf("R2MoELoadBank")].inputs.bank_name]?.concepts ?? [];
        assert.ok(concepts.length >= 1, JSON.stringify(listed).slice(0, 300));
        const report = (first.outputs.find((o) => o.node === info)?.output?.text ?? []).join("\n");
        for (const concept of concepts) assert.ok(report.includes(concept.name), `${concept.name} in the report`);
      }
      if (name.includes("learn")) {
        // An unchanged graph queued again runs nothing: no re-training, no rewritten bank, no report re-run.
        const prompt = await page.evaluate(async () => (await window.app.graphToPrompt()).output);
        for (const node of Object.values(prompt)) {
          assert.ok(!("r2moe_report" in node.inputs) && !("r2moe_layout_editor" in node.inputs), "page widget in prompt");
        }
        const second = await queueAndWait(page);
        const trainers = Object.entries(prompt).filter(([, n]) => n.class_type === "R2MoETrainConcept").map(([id]) => id);
        assert.ok(trainers.every((id) => first.executed.includes(id)), "first Queue trained every concept");
        // Each run shows at least its final preview (loss curve + the concept drawn) while the graph runs.
        assert.ok(first.previews >= trainers.length, `${first.previews} live previews for ${trainers.length} training runs`);
        const queueCounts = { nodes: Object.keys(prompt).length, first: first.executed.length, second: second.executed.length };
        process.stdout.write(`# queue twice (${LABEL}): ${JSON.stringify(queueCounts)} executed per Queue\n`);
        assert.deepEqual(second.executed, [], "second Queue of an unchanged graph executed nodes");
      }
    });
  });
}

test(`${LABEL}: dragging a box in the region editor edits the layout JSON, and the edit survives save and reload`, async () => {
  await step("editor", async () => {
    await page.evaluate(() => {
      window.app.graph.clear();
      const node = window.LiteGraph.createNode("R2MoELayoutFromJSON");
      node.pos = [120, 120];
      window.app.graph.add(node);
      window.app.canvas.ds.offset = [0, 0];
      window.app.canvas.ds.scale = 1;
      window.app.canvas.setDirty(true, true);
    });
    const canvas = page.locator(`${VUE_NODES ? "[data-node-id] " : ""}.r2moe-layout-editor canvas`).first();
    await canvas.waitFor({ timeout: 10_000 });
    await page.waitForTimeout(300);
    const before = await page.evaluate(() => JSON.parse(window.app.graph.nodes[0].widgets.find((w) => w.name === "layout_json").value));
    const box = await canvas.boundingBox();
    const [x0, y0, x1, y1] = before.regions[0].box;
    const from = { x: box.x + ((x0 + x1) / 2) * box.width, y: box.y + ((y0 + y1) / 2) * box.height };
    await page.mouse.move(from.x, from.y);
    await page.mouse.down();
    await page.mouse.move(from.x + 0.2 * box.width, from.y, { steps: 8 });
    await page.mouse.up();
    const after = await page.evaluate(() => JSON.parse(window.app.graph.nodes[0].widgets.find((w) => w.name === "layout_json").value));
    const moved = after.regions[0].box;
    assert.ok(Math.abs(moved[0] - (x0 + 0.2)) < 0.05, `box left ${moved[0]}, expected about ${x0 + 0.2}`);
    assert.ok(Math.abs(moved[2] - moved[0] - (x1 - x0)) < 0.05 && Math.abs(moved[1] - y0) < 0.05, "moved, not resized");
    assert.deepEqual(after.regions[1], before.regions[1], "the other region is untouched");
    await canvas.screenshot({ path: path.join(SHOTS, `${LABEL}-editor.png`) });
    const saved = await page.evaluate(() => JSON.stringify(window.app.graph.serialize()));
    await page.evaluate(async (text) => {
      window.app.graph.clear();
      await window.app.loadGraphData(JSON.parse(text));
    }, saved);
    const reloaded = await page.evaluate(() => JSON.parse(window.app.graph.nodes[0].widgets.find((w) => w.name === "layout_json").value));
    assert.deepEqual(reloaded, after);
    const widgetsValues = JSON.parse(saved).nodes[0].widgets_values;
    assert.ok(!widgetsValues.some((v) => typeof v === "string" && v.includes("region(s)")), "editor state saved");
    assert.deepEqual(packErrors(page), []);
  });
});

test(`${LABEL}: R2MoELoadBank lists its bank's concepts, and "<" in a prompt box completes a trigger token`, async () => {
  await step("tokens", async () => {
    const listing = await (await fetch(`${server.url}/r2moe/concepts`)).json();
    const bank = "two_concepts.safetensors"; // saved by the learn-two-concepts template above
    assert.deepEqual(listing.banks[bank]?.concepts?.map((c) => c.token), ["<a1>", "<b1>"], JSON.stringify(listing));
    await page.evaluate((bankName) => {
      window.app.graph.clear();
      const loader = window.LiteGraph.createNode("R2MoELoadBank");
      loader.pos = [60, 80];
      window.app.graph.add(loader);
      const bankWidget = loader.widgets.find((w) => w.name === "bank_name");
      bankWidget.value = bankName;
      bankWidget.callback?.(bankName);
      const encoder = window.LiteGraph.createNode("CLIPTextEncode");
      encoder.pos = [460, 80];
      window.app.graph.add(encoder);
      window.app.canvas.ds.offset = [0, 0];
      window.app.canvas.ds.scale = 1;
      window.app.canvas.setDirty(true, true);
    }, bank);
    const list = page.locator(".r2moe-bank-concepts").first();
    await list.waitFor({ timeout: 10_000 });
    await page.waitForFunction(() => document.querySelector(".r2moe-bank-concepts")?.textContent.includes("<b1>"),
      null, { timeout: 10_000 });
    assert.match(await list.textContent(), /<a1>\s+concept_a \(dog\)\n<b1>\s+concept_b \(cat\)/);
    const prompt = page.locator("textarea:not([readonly])").last();
    await prompt.click();
    await prompt.fill("");
    await prompt.pressSequentially("a photo of <b", { delay: 20 });
    const option = page.locator(".r2moe-token-completion", { hasText: "<b1>" });
    await option.waitFor({ timeout: 10_000 });
    await page.keyboard.press("Enter");
    const value = await page.evaluate(() =>
      window.app.graph.nodes.find((n) => n.type === "CLIPTextEncode").widgets.find((w) => w.name === "text").value);
    assert.equal(value, "a photo of <b1> ");
    assert.equal(await page.locator(".r2moe-token-completions").evaluate((el) => el.style.display), "none");
    await page.screenshot({ path: path.join(SHOTS, `${LABEL}-tokens.png`) });
    assert.deepEqual(packErrors(page), []);
  });
});
