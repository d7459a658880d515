// Region editor for R2MoE layouts: boxes drawn over the canvas, the layout JSON text stays the only state.
// Every edit parses the JSON widget, changes one region and writes the JSON back, so what is saved, shared and
// diffed is always the text the Python node validates. This module only exports; r2moe.js attaches it to nodes.

const HANDLE = 7; // px: how close to a corner counts as grabbing it
const SNAP_PX = 8; // image pixels: boxes snap to this grid (the latent grid of SD models)
const MIN_BOX = 0.02; // smallest box side, as a fraction of the canvas
const COLOURS = ["#e0605a", "#5aa9e0", "#6cc070", "#e0b050", "#b07ce0", "#50d0c8", "#e07cb8", "#a0a0a0"];

export function parseLayout(text) {
  try {
    const layout = JSON.parse(text);
    if (!layout || typeof layout !== "object" || !Array.isArray(layout.regions)) {
      return { error: "the JSON has no \"regions\" list" };
    }
    return { layout };
  } catch (err) {
    return { error: `invalid JSON: ${err.message}` };
  }
}

function clamp(v, lo, hi) {
  return Math.min(hi, Math.max(lo, v));
}

function round4(v) {
  return Math.round(v * 10000) / 10000;
}

/** Snap a fraction of the canvas to the pixel grid and to the canvas edges. */
export function snap(fraction, pixels) {
  const step = SNAP_PX / Math.max(pixels, SNAP_PX);
  return round4(clamp(Math.round(fraction / step) * step, 0, 1));
}

export class LayoutEditor {
  /**
   * @param {object} opts
   * @param {() => string} opts.read   returns the layout JSON text
   * @param {(text: string) => void} [opts.write]  stores edited JSON (absent: read-only view)
   */
  constructor({ read, write }) {
    this.read = read;
    this.write = write;
    this.selected = -1;
    this.drag = null;
    this.reference = null;
    this.element = document.createElement("div");
    this.element.className = "r2moe-layout-editor";
    this.element.style.cssText = "display:flex;flex-direction:column;gap:4px;width:100%;";
    this.canvas = document.createElement("canvas");
    this.canvas.tabIndex = 0;
    this.canvas.style.cssText = "width:100%;border-radius:4px;outline:none;cursor:crosshair;background:#202024;";
    this.canvas.setAttribute("aria-label", "R2MoE region editor");
    this.status = document.createElement("div");
    this.status.style.cssText = "font:11px monospace;color:#bbb;min-height:14px;white-space:nowrap;overflow:hidden;";
    this.element.append(this.canvas, this.status);
    if (this.write) {
      this.form = this.makeForm();
      this.element.append(this.form);
      this.canvas.addEventListener("pointerdown", (e) => this.onDown(e));
      this.canvas.addEventListener("pointermove", (e) => this.onMove(e));
      this.canvas.addEventListener("pointerup", (e) => this.onUp(e));
      this.canvas.addEventListener("keydown", (e) => this.onKey(e));
    }
    for (const type of ["pointerdown", "pointermove", "pointerup", "wheel", "keydown", "contextmenu"]) {
      this.element.addEventListener(type, (e) => e.stopPropagation()); // the graph canvas must not act on these
    }
    this.resizeObserver = new ResizeObserver(() => this.render());
    this.resizeObserver.observe(this.element);
  }

  makeForm() {
    const form = document.createElement("div");
    form.style.cssText = "display:grid;grid-template-columns:auto 1fr;gap:2px 6px;font:11px sans-serif;color:#ccc;";
    const field = (label, placeholder) => {
      const name = document.createElement("label");
      name.textContent = label;
      const input = document.createElement("input");
      input.placeholder = placeholder;
      input.style.cssText = "min-width:0;background:#2a2a30;color:#eee;border:1px solid #444;border-radius:3px;";
      input.addEventListener("change", () => this.onFormChange());
      form.append(name, input);
      return input;
    };
    this.promptInput = field("prompt", "select a box, e.g. a <dog1> dog");
    this.tokensInput = field("tokens", "concept tokens in the prompt, e.g. <dog1>");
    return form;
  }

  layout() {
    return this.pending ? { layout: this.pending } : parseLayout(this.read());
  }

  commit(layout) {
    this.write(JSON.stringify(layout, null, 2));
    this.render();
  }

  size(layout) {
    return { w: Number(layout?.width) || 512, h: Number(layout?.height) || 512 };
  }

  toFraction(e) {
    const rect = this.canvas.getBoundingClientRect();
    return { x: clamp((e.clientX - rect.left) / rect.width, 0, 1), y: clamp((e.clientY - rect.top) / rect.height, 0, 1) };
  }

  hit(layout, p) {
    const rect = this.canvas.getBoundingClientRect();
    const tx = HANDLE / rect.width;
    const ty = HANDLE / rect.height;
    for (let i = layout.regions.length - 1; i >= 0; i--) {
      const [x0, y0, x1, y1] = layout.regions[i].box ?? [0, 0, 0, 0];
      const corners = { nw: [x0, y0], ne: [x1, y0], sw: [x0, y1], se: [x1, y1] };
      for (const [name, [cx, cy]] of Object.entries(corners)) {
        if (Math.abs(p.x - cx) <= tx && Math.abs(p.y - cy) <= ty) return { index: i, mode: name };
      }
      if (p.x >= x0 && p.x <= x1 && p.y >= y0 && p.y <= y1) return { index: i, mode: "move" };
    }
    return null;
  }

  onDown(e) {
    const { layout } = this.layout();
    if (!layout) return;
    this.canvas.focus();
    this.canvas.setPointerCapture?.(e.pointerId);
    const p = this.toFraction(e);
    const hit = this.hit(layout, p);
    if (hit) {
      this.selected = hit.index;
      this.drag = { ...hit, start: p, box: [...layout.regions[hit.index].box] };
    } else {
      layout.regions.push({ prompt: "", box: [p.x, p.y, p.x, p.y] });
      this.selected = layout.regions.length - 1;
      this.drag = { index: this.selected, mode: "se", start: p, box: [p.x, p.y, p.x, p.y], created: true };
      this.pending = layout;
    }
    this.fillForm();
    this.render();
  }

  draggedBox(p) {
    const { mode, start, box } = this.drag;
    let [x0, y0, x1, y1] = box;
    const dx = p.x - start.x;
    const dy = p.y - start.y;
    if (mode === "move") {
      const w = x1 - x0;
      const h = y1 - y0;
      x0 = clamp(x0 + dx, 0, 1 - w);
      y0 = clamp(y0 + dy, 0, 1 - h);
      return [x0, y0, x0 + w, y0 + h];
    }
    if (mode.includes("w")) x0 = clamp(x0 + dx, 0, 1);
    if (mode.includes("e")) x1 = clamp(x1 + dx, 0, 1);
    if (mode.includes("n")) y0 = clamp(y0 + dy, 0, 1);
    if (mode.includes("s")) y1 = clamp(y1 + dy, 0, 1);
    return [Math.min(x0, x1), Math.min(y0, y1), Math.max(x0, x1), Math.max(y0, y1)];
  }

  onMove(e) {
    const p = this.toFraction(e);
    if (!this.drag) {
      const { layout } = this.layout();
      const hit = layout && this.hit(layout, p);
      this.canvas.style.cursor = !hit ? "crosshair" : hit.mode === "move" ? "move" : `${hit.mode}-resize`;
      return;
    }
    this.preview = this.draggedBox(p);
    this.render();
  }

  onUp(e) {
    if (!this.drag) return;
    const layout = this.pending ?? this.layout().layout;
    const { w, h } = this.size(layout);
    const raw = this.draggedBox(this.toFraction(e));
    const box = [snap(raw[0], w), snap(raw[1], h), snap(raw[2], w), snap(raw[3], h)];
    const tooSmall = box[2] - box[0] < MIN_BOX || box[3] - box[1] < MIN_BOX;
    const region = layout.regions[this.drag.index];
    this.drag = null;
    this.preview = null;
    this.pending = null;
    if (tooSmall) {
      this.render();
      return; // a click, not a drag: select only (a new box that small is dropped)
    }
    region.box = box;
    this.commit(layout);
    this.fillForm();
  }

  onKey(e) {
    if ((e.key === "Delete" || e.key === "Backspace") && this.selected >= 0) {
      const { layout } = this.layout();
      if (!layout || this.selected >= layout.regions.length) return;
      layout.regions.splice(this.selected, 1);
      this.selected = -1;
      e.preventDefault();
      this.commit(layout);
      this.fillForm();
    }
  }

  fillForm() {
    if (!this.form) return;
    const { layout } = this.layout();
    const region = layout?.regions?.[this.selected];
    this.promptInput.value = region?.prompt ?? "";
    this.tokensInput.value = (region?.tokens ?? []).join(", ");
    this.promptInput.disabled = this.tokensInput.disabled = !region;
  }

  onFormChange() {
    const { layout } = this.layout();
    const region = layout?.regions?.[this.selected];
    if (!region) return;
    region.prompt = this.promptInput.value;
    const tokens = this.tokensInput.value.split(/[\s,]+/).filter(Boolean);
    if (tokens.length) region.tokens = tokens;
    else delete region.tokens;
    this.commit(layout);
  }

  setReference(url) {
    if (!url) {
      this.reference = null;
      this.render();
      return;
    }
    const image = new Image();
    image.onload = () => {
      this.reference = image;
      this.render();
    };
    image.src = url;
  }

  render() {
    const { layout, error } = this.layout();
    const { w, h } = this.size(layout);
    const cssWidth = Math.max(this.canvas.clientWidth || this.element.clientWidth || 300, 50);
    const cssHeight = Math.round((cssWidth * h) / w);
    this.canvas.style.height = `${cssHeight}px`;
    const scale = window.devicePixelRatio || 1;
    this.canvas.width = Math.round(cssWidth * scale);
    this.canvas.height = Math.round(cssHeight * scale);
    const ctx = this.canvas.getContext("2d");
    ctx.setTransform(scale, 0, 0, scale, 0, 0);
    ctx.fillStyle = "#202024";
    ctx.fillRect(0, 0, cssWidth, cssHeight);
    if (this.reference) ctx.drawImage(this.reference, 0, 0, cssWidth, cssHeight);
    if (!layout) {
      this.status.textContent = error;
      return;
    }
    const regions = layout.regions;
    regions.forEach((region, i) => {
      const live = this.drag && this.drag.index === i && this.preview ? this.preview : region.box ?? [0, 0, 0, 0];
      const [x0, y0, x1, y1] = live;
      const colour = COLOURS[i % COLOURS.length];
      ctx.fillStyle = `${colour}33`;
      ctx.strokeStyle = colour;
      ctx.lineWidth = i === this.selected ? 3 : 1.5;
      ctx.fillRect(x0 * cssWidth, y0 * cssHeight, (x1 - x0) * cssWidth, (y1 - y0) * cssHeight);
      ctx.strokeRect(x0 * cssWidth, y0 * cssHeight, (x1 - x0) * cssWidth, (y1 - y0) * cssHeight);
      if (i === this.selected && this.write) {
        ctx.fillStyle = colour;
        for (const [cx, cy] of [[x0, y0], [x1, y0], [x0, y1], [x1, y1]]) {
          ctx.fillRect(cx * cssWidth - 4, cy * cssHeight - 4, 8, 8);
        }
      }
      const tokens = (region.tokens ?? []).join(" ");
      const label = `${i + 1}${tokens ? ` ${tokens}` : ""}: ${region.prompt || "(no prompt)"}`;
      ctx.font = "12px sans-serif";
      ctx.fillStyle = "#000a";
      const textWidth = Math.min(ctx.measureText(label).width + 6, Math.max((x1 - x0) * cssWidth, 40));
      ctx.fillRect(x0 * cssWidth, y0 * cssHeight, textWidth, 16);
      ctx.fillStyle = "#fff";
      ctx.save();
      ctx.beginPath();
      ctx.rect(x0 * cssWidth, y0 * cssHeight, textWidth, 16);
      ctx.clip();
      ctx.fillText(label, x0 * cssWidth + 3, y0 * cssHeight + 12);
      ctx.restore();
    });
    const hint = this.write ? "drag: new box · drag a box: move · corners: resize · Del: remove" : "planned layout";
    this.status.textContent = `${w}x${h}, ${regions.length} region(s) · ${hint}`;
  }
}
