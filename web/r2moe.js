// R2MoE front-end extension: shows what a bank holds right on the node, so users look instead of read logs.
// Registered through WEB_DIRECTORY; works with the ComfyUI frontend 1.x (window.comfyAPI) and its app.js shim.
const { app } = window.comfyAPI?.app ?? (await import("../../scripts/app.js"));

const TEXT_NODES = new Set(["R2MoEBankInfo", "R2MoESaveBank", "R2MoEPruneBank", "R2MoETrainConcept"]);

function showText(node, lines) {
  const text = Array.isArray(lines) ? lines.join("\n") : String(lines ?? "");
  let widget = node.widgets?.find((w) => w.name === "r2moe_report");
  if (!widget) {
    const made = app.widgets?.STRING?.(node, "r2moe_report", ["STRING", { multiline: true }], app);
    widget = made?.widget ?? made;
    if (!widget) return;
    widget.serialize = false;  // a report, not an input: keep it out of the saved workflow
    if (widget.inputEl) {
      widget.inputEl.readOnly = true;
      widget.inputEl.style.opacity = 0.85;
      widget.inputEl.style.fontFamily = "monospace";
    }
  }
  widget.value = text;
  node.setSize?.([Math.max(node.size[0], 420), Math.max(node.size[1], 180)]);
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "r2moe.bank",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!TEXT_NODES.has(nodeData.name)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      if (message?.text) showText(this, message.text);
    };
  },
});
