// Trigger tokens at hand: the concepts of the banks in models/r2moe (GET /r2moe/concepts) listed under
// R2MoELoadBank's dropdown, and offered as completions when a prompt box's word starts with "<".
// Plain DOM, so it works with the classic canvas widgets and with Vue nodes (both render prompt boxes as <textarea>).

const ROUTE = "/r2moe/concepts";
const FRESH_MS = 5_000; // a listing younger than this is reused; the server caches each file's header anyway

let listing = { banks: {} };
let fetchedAt = 0;
let pending = null;

/** The listing, fetched again when older than FRESH_MS (or when `force`). Never throws: an empty one on failure. */
export async function conceptListing(api, { force = false } = {}) {
  if (!force && Date.now() - fetchedAt < FRESH_MS) return listing;
  pending ??= api
    .fetchApi(ROUTE)
    .then((response) => (response.ok ? response.json() : { banks: {} }))
    .catch(() => ({ banks: {} }))
    .then((data) => {
      listing = data && typeof data.banks === "object" ? data : { banks: {} };
      fetchedAt = Date.now();
      pending = null;
      return listing;
    });
  return pending;
}

/** Every concept of every bank: [{token, name, class_word, bank}], one entry per token (first bank wins). */
export function allConcepts(data) {
  const seen = new Map();
  for (const [bank, entry] of Object.entries(data?.banks ?? {})) {
    for (const concept of entry?.concepts ?? []) {
      if (concept.token && !seen.has(concept.token)) seen.set(concept.token, { ...concept, bank });
    }
  }
  return [...seen.values()];
}

/** The lines shown under R2MoELoadBank for one bank. */
export function bankSummary(data, bankName) {
  const entry = data?.banks?.[bankName];
  if (!bankName) return "no bank selected";
  if (!entry) return `${bankName}: not found in models/r2moe (refresh the page after copying it there)`;
  if (entry.error) return `${bankName}: ${entry.error}`;
  if (!entry.concepts?.length) return `${bankName}: no concepts yet (train one with R2MoE Train Concept)`;
  return entry.concepts.map((c) => `${c.token}  ${c.name}${c.class_word ? ` (${c.class_word})` : ""}`).join("\n");
}

/** A read-only list of the selected bank's concepts under R2MoELoadBank's dropdown. */
export function addBankConcepts(node, api, addPageWidget) {
  const list = document.createElement("div");
  list.className = "r2moe-bank-concepts";
  list.style.cssText =
    "white-space:pre;overflow:auto;font:11px monospace;color:#ddd;background:#1c1c20;border:1px solid #333;" +
    "border-radius:4px;padding:3px 5px;box-sizing:border-box;height:100%;";
  addPageWidget(node, "r2moe_bank_concepts", list, { getValue: () => "", setValue: () => {}, getMinHeight: () => 48 });
  const bankWidget = node.widgets?.find((w) => w.name === "bank_name");
  const refresh = async (force = false) => {
    const data = await conceptListing(api, { force });
    list.textContent = bankSummary(data, String(bankWidget?.value ?? ""));
  };
  if (bankWidget) {
    const original = bankWidget.callback;
    bankWidget.callback = function (...args) {
      const result = original?.apply(this, args);
      refresh();
      return result;
    };
  }
  node.r2moeRefreshConcepts = refresh;
  refresh(true);
}

/** The "<partial" word ending at the caret, or null. */
export function partialToken(text, caret) {
  const match = /<[^\s<>,]*$/.exec(text.slice(0, caret));
  return match ? { start: match.index, word: match[0] } : null;
}

class TokenCompleter {
  constructor(api) {
    this.api = api;
    this.box = document.createElement("div");
    this.box.className = "r2moe-token-completions";
    this.box.setAttribute("role", "listbox");
    this.box.style.cssText =
      "position:fixed;z-index:10000;display:none;min-width:180px;max-height:200px;overflow:auto;font:12px monospace;" +
      "background:#222;color:#eee;border:1px solid #555;border-radius:4px;box-shadow:0 4px 12px #0008;";
    document.body.appendChild(this.box);
    this.target = null;
    this.items = [];
    this.active = 0;
    document.addEventListener("input", (event) => this.onInput(event), true);
    document.addEventListener("keydown", (event) => this.onKey(event), true);
    document.addEventListener("focusout", () => setTimeout(() => this.closeIfBlurred(), 150), true);
  }

  async onInput(event) {
    const area = event.target;
    if (!(area instanceof HTMLTextAreaElement) || area.readOnly || area.closest(".r2moe-token-completions")) return;
    const found = partialToken(area.value, area.selectionStart ?? area.value.length);
    if (!found) return this.close();
    const word = found.word.toLowerCase();
    const concepts = allConcepts(await conceptListing(this.api));
    const items = concepts.filter((c) => c.token.toLowerCase().startsWith(word) && c.token.length >= word.length);
    if (!items.length || (items.length === 1 && items[0].token === found.word)) return this.close();
    this.open(area, found, items);
  }

  open(area, found, items) {
    this.target = area;
    this.found = found;
    this.items = items.slice(0, 50);
    this.active = 0;
    this.box.replaceChildren(
      ...this.items.map((item, index) => {
        const row = document.createElement("div");
        row.className = "r2moe-token-completion";
        row.setAttribute("role", "option");
        row.dataset.token = item.token;
        row.textContent = `${item.token}  ${item.name}${item.class_word ? ` (${item.class_word})` : ""}  ${item.bank}`;
        row.style.cssText = "padding:2px 6px;cursor:pointer;white-space:nowrap;";
        row.addEventListener("mousedown", (event) => {
          event.preventDefault(); // keep the focus in the prompt box
          this.insert(index);
        });
        return row;
      }),
    );
    const rect = area.getBoundingClientRect();
    this.box.style.left = `${Math.round(rect.left)}px`;
    this.box.style.top = `${Math.round(Math.min(rect.bottom, window.innerHeight - 210))}px`;
    this.box.style.display = "block";
    this.highlight();
  }

  highlight() {
    [...this.box.children].forEach((row, index) => {
      row.style.background = index === this.active ? "#3a5a8a" : "";
      row.setAttribute("aria-selected", String(index === this.active));
    });
  }

  onKey(event) {
    if (this.box.style.display === "none" || event.target !== this.target) return;
    const moves = { ArrowDown: 1, ArrowUp: -1 };
    if (event.key in moves) {
      this.active = (this.active + moves[event.key] + this.items.length) % this.items.length;
      this.highlight();
    } else if (event.key === "Enter" || event.key === "Tab") {
      this.insert(this.active);
    } else if (event.key === "Escape") {
      this.close();
    } else {
      return;
    }
    event.preventDefault();
    event.stopPropagation();
  }

  insert(index) {
    const area = this.target;
    const item = this.items[index];
    if (!area || !item) return this.close();
    const caret = area.selectionStart ?? area.value.length;
    const after = area.value.slice(caret);
    const spacer = after.startsWith(" ") ? "" : " ";
    area.value = area.value.slice(0, this.found.start) + item.token + spacer + after;
    const position = this.found.start + item.token.length + spacer.length;
    area.setSelectionRange(position, position);
    this.close();
    // The widget (canvas or Vue) takes its value from the box's own input event.
    area.dispatchEvent(new Event("input", { bubbles: true }));
    area.dispatchEvent(new Event("change", { bubbles: true }));
  }

  closeIfBlurred() {
    if (document.activeElement !== this.target) this.close();
  }

  close() {
    this.box.style.display = "none";
    this.target = null;
    this.items = [];
  }
}

let completer = null;

/** Start offering trigger-token completions in every prompt box of the page (once). */
export function startTokenCompletion(api) {
  completer ??= new TokenCompleter(api);
  return completer;
}
