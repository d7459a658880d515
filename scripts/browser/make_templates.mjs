// Writes example_workflows/<name>.json (UI format, with a MarkdownNote) and <name>.jpg (a screenshot of the graph
// after a real run on the tiny model) for every template in templates.mjs. Run: node scripts/browser/make_templates.mjs
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fitView, launchBrowser, makeRunnable, openApp, queueAndWait, REPO, startServer } from "./comfy_page.mjs";
import { TEMPLATES } from "./templates.mjs";

const OUT = path.join(REPO, "example_workflows");

/** Load an API workflow into the graph, lay it out in columns by depth, add the note; returns the UI JSON. */
export async function buildTemplate(page, spec) {
  const api = JSON.parse(readFileSync(path.join(REPO, "scripts", "api_workflows", spec.api), "utf8"));
  return page.evaluate(
    async ({ api, spec }) => {
      const app = window.app;
      app.graph.clear();
      await app.loadApiJson(api, spec.name);
      const nodes = app.graph.nodes;
      let trained = 0;
      for (const node of nodes) {
        const type = node.comfyClass ?? node.type;
        for (const [name, value] of Object.entries(spec.values?.[type] ?? {})) {
          const widget = node.widgets?.find((w) => w.name === name);
          if (widget) widget.value = value;
        }
        const control = node.widgets?.find((w) => w.name === "control_after_generate");
        if (control) control.value = "fixed"; // same seed, same image: queuing an unchanged graph runs nothing
        if (type === "R2MoETrainConcept" && spec.folders) {
          node.widgets.find((w) => w.name === "folder").value = spec.folders[trained++];
        }
      }
      const depth = new Map();
      const depthOf = (node) => {
        if (depth.has(node.id)) return depth.get(node.id);
        depth.set(node.id, 0);
        let d = 0;
        for (const input of node.inputs ?? []) {
          const link = input.link != null ? app.graph.links[input.link] ?? app.graph.links.get?.(input.link) : null;
          const origin = link ? app.graph.getNodeById(link.origin_id) : null;
          if (origin) d = Math.max(d, depthOf(origin) + 1);
        }
        depth.set(node.id, d);
        return d;
      };
      const columns = [];
      for (const node of nodes) (columns[depthOf(node)] ??= []).push(node);
      let x = 420;
      for (const column of columns.filter(Boolean)) {
        let y = 60;
        let width = 0;
        for (const node of column.sort((a, b) => a.id - b.id)) {
          const computed = node.computeSize();
          node.size = [Math.max(node.size[0], computed[0]), Math.max(node.size[1], computed[1])];
          node.pos = [x, y];
          y += node.size[1] + 70;
          width = Math.max(width, node.size[0]);
        }
        x += width + 60;
      }
      const note = LiteGraph.createNode("MarkdownNote");
      note.title = spec.title;
      note.pos = [20, 60];
      note.size = [370, 520];
      app.graph.add(note);
      note.widgets[0].value = spec.note;
      app.canvas.setDirty(true, true);
      return app.graph.serialize();
    },
    { api, spec },
  );
}

/** The screen rectangle around every node (for the thumbnail), inside the canvas element. */
async function graphClip(page) {
  return page.evaluate(() => {
    const canvas = window.app.canvas;
    const box = canvas.canvas.getBoundingClientRect();
    let [x0, y0, x1, y1] = [Infinity, Infinity, -Infinity, -Infinity];
    for (const node of window.app.graph.nodes) {
      const [a, b] = canvas.ds.convertOffsetToCanvas([node.pos[0], node.pos[1] - 30]);
      const [c, d] = canvas.ds.convertOffsetToCanvas([node.pos[0] + node.size[0], node.pos[1] + node.size[1]]);
      [x0, y0, x1, y1] = [Math.min(x0, a), Math.min(y0, b), Math.max(x1, c), Math.max(y1, d)];
    }
    const left = Math.max(box.left, box.left + x0 - 10);
    const top = Math.max(box.top, box.top + y0 - 10);
    const right = Math.min(box.right, box.left + x1 + 10);
    const bottom = Math.min(box.bottom, box.top + y1 + 10);
    return { x: left, y: top, width: right - left, height: bottom - top };
  });
}

async function main() {
  mkdirSync(OUT, { recursive: true });
  const info = await startServer();
  const browser = await launchBrowser();
  try {
    const page = await openApp(browser, info.url);
    for (const spec of TEMPLATES) {
      const workflow = await buildTemplate(page, spec);
      writeFileSync(path.join(OUT, `${spec.name}.json`), `${JSON.stringify(workflow, null, 2)}\n`);
      await page.evaluate(() => window.app.refreshComboInNodes?.());
      await makeRunnable(page, info);
      const run = await queueAndWait(page);
      if (run.error) throw new Error(`${spec.name}: ${JSON.stringify(run.error).slice(0, 800)}`);
      await fitView(page);
      const clip = await graphClip(page);
      await page.screenshot({ path: path.join(OUT, `${spec.name}.jpg`), type: "jpeg", quality: 80, clip });
      process.stdout.write(`${spec.name}: ${workflow.nodes.length} nodes, ${run.executed.length} executed\n`);
    }
  } finally {
    await browser.close();
    await info.stop();
  }
}

if (import.meta.url === `file://${process.argv[1]}`) await main();
