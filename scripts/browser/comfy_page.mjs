// Driving the real ComfyUI frontend in Debian's Chromium through playwright-core (no browser download):
// shared by the browser test tier and the template maker. Development only; never loaded by the pack.
import { spawn } from "node:child_process";
import { once } from "node:events";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const PYTHON = path.join(REPO, ".venv", "bin", "python");
const CHROMIUM = process.env.R2MOE_CHROMIUM ?? "/usr/bin/chromium";
export const TINY_CKPT = "r2moe_tiny_sd15.safetensors";
export const TINY_SAM = "r2moe_tiny_sam.safetensors";

/** Start scripts/browser_server.py; resolves to {url, base, concepts, stop()}. */
export async function startServer({ frontEndRoot } = {}) {
  const args = [path.join(REPO, "scripts", "browser_server.py")];
  if (frontEndRoot) args.push("--front-end-root", frontEndRoot);
  const proc = spawn(PYTHON, args, { cwd: REPO, stdio: ["pipe", "pipe", "inherit"] });
  let buffer = "";
  for await (const chunk of proc.stdout) {
    buffer += chunk;
    if (buffer.includes("\n")) break;
  }
  if (!buffer.trim()) throw new Error("browser_server.py exited before it served (see its output above)");
  const info = JSON.parse(buffer.split("\n")[0]);
  info.stop = async () => {
    proc.stdin.end();
    if (proc.exitCode === null) await once(proc, "exit");
  };
  return info;
}

export async function launchBrowser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync",
    ],
  });
}

/** A page on the ComfyUI app with the first-run dialogs settled; `page.r2moeErrors` collects script errors.
 * `vueNodes` turns on the newer frontends' "Nodes 2.0" rendering (a setting older frontends ignore). */
export async function openApp(browser, url, { vueNodes = false } = {}) {
  await fetch(`${url}/api/settings`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({
      "Comfy.TutorialCompleted": true,
      "Comfy.Workflow.ShowMissingModelsWarning": false,
      "Comfy.Minimap.Visible": false,
      "Comfy.VueNodes.Enabled": vueNodes,
    }),
  });
  const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
  page.r2moeErrors = [];
  page.on("pageerror", (err) => page.r2moeErrors.push(`pageerror: ${err.message}\n${err.stack ?? ""}`));
  page.on("console", (msg) => {
    if (msg.type() === "error") page.r2moeErrors.push(`console: ${msg.text()} @ ${msg.location()?.url ?? ""}`);
  });
  await page.goto(url);
  await page.waitForFunction(() => window.app?.graph && window.comfyAPI?.api, null, { timeout: 90_000 });
  await page.evaluate(() => {
    const { api } = window.comfyAPI.api;
    window.r2moeEvents = [];
    // b_preview*: the live preview pictures nodes send while they run (a training run's loss curve and sample)
    for (const type of ["executing", "executed", "execution_cached", "execution_success", "execution_error",
      "b_preview", "b_preview_with_metadata"]) {
      api.addEventListener(type, (e) => window.r2moeEvents.push({ type, detail: e.detail }));
    }
  });
  await page.keyboard.press("Escape");
  return page;
}

/** Errors that came from the pack's own scripts (/extensions/r2moe/...). */
export function packErrors(page) {
  return page.r2moeErrors.filter((e) => e.includes("/extensions/r2moe/") || e.includes("r2moe"));
}

/** Queue the current graph and wait for it to finish; returns {executed: [node ids], cached: [...], error, previews, outputs}. */
export async function queueAndWait(page, timeoutMs = 300_000) {
  const start = await page.evaluate(() => window.r2moeEvents.length);
  await page.evaluate(() => window.app.queuePrompt(0, 1));
  const handle = await page.waitForFunction(
    (from) => {
      const done = window.r2moeEvents.slice(from).find((e) => e.type === "execution_success" || e.type === "execution_error");
      return done ? true : false;
    },
    start,
    { timeout: timeoutMs, polling: 250 },
  );
  await handle.dispose();
  return page.evaluate((from) => {
    const events = window.r2moeEvents.slice(from);
    const executed = events.filter((e) => e.type === "executing" && e.detail != null).map((e) => String(e.detail?.node ?? e.detail));
    const cached = events.filter((e) => e.type === "execution_cached").flatMap((e) => e.detail.nodes.map(String));
    const error = events.find((e) => e.type === "execution_error")?.detail ?? null;
    // A preview may arrive as both events (newer frontends dispatch the legacy one too): count the larger.
    const previews = Math.max(...["b_preview", "b_preview_with_metadata"].map((t) => events.filter((e) => e.type === t).length));
    const outputs = events.filter((e) => e.type === "executed").map((e) => ({ node: String(e.detail.node), output: e.detail.output }));
    return { executed: [...new Set(executed)], cached, error, previews, outputs };
  }, start);
}

/** Set a widget value on every node of a type (nodes found by comfyClass). */
export async function setWidgets(page, type, values) {
  await page.evaluate(
    ({ type, values }) => {
      for (const node of window.app.graph.nodes.filter((n) => n.comfyClass === type || n.type === type)) {
        for (const [name, value] of Object.entries(values)) {
          const widget = node.widgets?.find((w) => w.name === name);
          if (widget) widget.value = typeof value === "function" ? value(widget.value) : value;
        }
      }
    },
    { type, values },
  );
}

/** What the tests and thumbnails change in a template so it runs in minutes on the tiny model. */
export async function makeRunnable(page, info) {
  const folders = Object.values(info.concepts);
  await page.evaluate(
    ({ ckpt, sam, folders }) => {
      let trained = 0;
      for (const node of window.app.graph.nodes) {
        const set = (name, value) => {
          const widget = node.widgets?.find((w) => w.name === name);
          if (widget) widget.value = value;
        };
        const type = node.comfyClass ?? node.type;
        if (type === "CheckpointLoaderSimple") set("ckpt_name", ckpt);
        if (type === "R2MoESAMLoader") set("sam_name", sam);
        if (type === "R2MoETrainConcept") {
          set("folder", folders[trained++ % folders.length]);
          set("steps", 3);
          set("resolution", 64);
          set("preview_every", 0);
        }
        if (type === "EmptyLatentImage") {
          set("width", 128);
          set("height", 128);
        }
        if (type === "KSampler" || type === "R2MoEHierarchicalSampler") set("steps", 4);
      }
    },
    { ckpt: TINY_CKPT, sam: TINY_SAM, folders },
  );
}

export async function fitView(page) {
  await page.evaluate(async () => {
    const command = window.app.extensionManager?.command;
    if (command) await command.execute("Comfy.Canvas.FitView");
    window.app.canvas.setDirty(true, true);
  });
  await page.waitForTimeout(400);
}
