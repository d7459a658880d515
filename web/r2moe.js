// R2MoE front-end extension: reports shown on the nodes that make them, and a box editor for layouts.
// Registered through WEB_DIRECTORY; works with the ComfyUI frontend 1.x (window.comfyAPI) and its app.js shim.
// Nothing this file adds is ever sent with the prompt: a widget that reached the prompt would change the node's
// cache key, and an unchanged graph would re-run (and re-train) on every Queue.
import { addBankConcepts, startTokenCompletion } from "./concept_tokens.js";
import { LayoutEditor } from "./layout_editor.js";

const { app } = window.comfyAPI?.app ?? (await import("../../scripts/app.js"));
const { api } = window.comfyAPI?.api ?? (await import("../../scripts/api.js"));

const REPORT_NODES = new Set([
  "R2MoEBankInfo", "R2MoEBankHistory", "R2MoESaveBank", "R2MoEPruneBank", "R2MoETrainConcept", "R2MoEGateMap",
  "R2MoELayoutPlanner", "R2MoERemoveConcept", "R2MoERenameConcept", "R2MoEExportConcept",
  "R2MoEMergeBanks", "R2MoEImportLoRA",
]);
const EDITOR_NODE = "R2MoELayoutFromJSON";
const LOAD_NODE = "R2MoELoadBank";
const PLAN_NODE = "R2MoELayoutPlanner";

/** A widget that lives only in the page: not in the prompt, not in the saved workflow. */
function addPageWidget(node, name, element, options) {
  const widget = node.addDOMWidget(name, name, element, { hideOnZoom: false, ...options });
  widget.options.serialize = false; // the prompt builder skips widgets whose options say so
  widget.serialize = false; // the workflow saver skips widgets that say so themselves
  return widget;
}

function addReport(node) {
  const area = document.createElement("textarea");
  area.readOnly = true;
  area.placeholder = "report: appears after the node runs";
  area.style.cssText =
    "width:100%;height:100%;resize:none;font:11px monospace;opacity:0.9;background:#1c1c20;color:#ddd;" +
    "border:1px solid #333;border-radius:4px;box-sizing:border-box;";
  addPageWidget(node, "r2moe_report", area, {
    getValue: () => area.value,
    setValue: (v) => {
      area.value = v ?? "";
    },
    getMinHeight: () => 64,
    getMaxHeight: () => 220,
  });
  return area;
}

function addEditor(node, { readOnly }) {
  const jsonWidget = node.widgets?.find((w) => w.name === "layout_json");
  let planned = "";
  const editor = new LayoutEditor({
    read: () => (readOnly ? planned : String(jsonWidget?.value ?? "")),
    write: readOnly
      ? undefined
      : (text) => {
          jsonWidget.value = text;
          jsonWidget.callback?.(text);
          node.setDirtyCanvas?.(true, true);
        },
  });
  addPageWidget(node, "r2moe_layout_editor", editor.element, {
    getValue: () => "",
    setValue: () => {},
    getMinHeight: () => (readOnly ? 150 : 230),
  });
  if (jsonWidget && !readOnly) {
    // Typing in the JSON box (or loading a workflow) redraws the boxes.
    const original = jsonWidget.callback;
    jsonWidget.callback = function (...args) {
      const result = original?.apply(this, args);
      editor.render();
      return result;
    };
    jsonWidget.element?.addEventListener?.("input", () => editor.render());
  }
  node.r2moeEditor = editor;
  node.r2moeSetPlan = (text) => {
    planned = text;
    editor.render();
  };
  requestAnimationFrame(() => editor.render());
  return editor;
}

function imageUrl(image) {
  const params = new URLSearchParams({ filename: image.filename, subfolder: image.subfolder ?? "", type: image.type });
  return api.apiURL(`/view?${params}`);
}

app.registerExtension({
  name: "r2moe.nodes",
  setup() {
    startTokenCompletion(api);
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    const name = nodeData.name;
    if (!REPORT_NODES.has(name) && name !== EDITOR_NODE && name !== LOAD_NODE) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      if (name === LOAD_NODE) addBankConcepts(this, api, addPageWidget);
      if (name === EDITOR_NODE) {
        addEditor(this, { readOnly: false });
        this.setSize?.([Math.max(this.size[0], 380), Math.max(this.size[1], this.computeSize?.()[1] ?? 0)]);
      }
      if (name === PLAN_NODE) addEditor(this, { readOnly: true });
      if (REPORT_NODES.has(name)) this.r2moeReport = addReport(this);
      return result;
    };
    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function () {
      const result = onConfigure?.apply(this, arguments);
      requestAnimationFrame(() => this.r2moeEditor?.render());
      this.r2moeRefreshConcepts?.(); // a loaded workflow sets the bank without the widget's callback
      return result;
    };
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      if (this.r2moeReport && message?.text) {
        const text = message.text;
        this.r2moeReport.value = Array.isArray(text) ? text.join("\n") : String(text);
      }
      if (name === PLAN_NODE && message?.r2moe_layout) this.r2moeSetPlan?.(message.r2moe_layout[0]);
      if (name === EDITOR_NODE) {
        const image = message?.r2moe_reference?.[0];
        this.r2moeEditor?.setReference(image ? imageUrl(image) : null);
      }
    };
  },
});
