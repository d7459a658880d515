// The token completion's text rules, without a page: which word at the caret is a partial trigger token, how the
// bank listing reads, and what a damaged or empty bank says.
import assert from "node:assert/strict";
import { test } from "node:test";
import { allConcepts, bankSummary, partialToken } from "../../web/concept_tokens.js";

const LISTING = {
  banks: {
    "pets.safetensors": { concepts: [{ name: "dog", token: "<dog1>", class_word: "dog", thumbnail: false }] },
    "more.safetensors": { concepts: [{ name: "dog again", token: "<dog1>" }, { name: "mug", token: "<mug1>" }] },
    "broken.safetensors": { error: "broken.safetensors is not a safetensors file (or it is truncated)." },
    "empty.safetensors": { concepts: [] },
  },
};

test("a partial token is the '<' word that ends at the caret", () => {
  assert.deepEqual(partialToken("a photo of <do", 14), { start: 11, word: "<do" });
  assert.deepEqual(partialToken("a photo of <", 12), { start: 11, word: "<" });
  assert.equal(partialToken("a photo of <dog1> on", 20), null, "the caret is past the token");
  assert.equal(partialToken("a photo of <do", 5), null, "only the text before the caret counts");
  assert.deepEqual(partialToken("<a1>,<b", 7), { start: 5, word: "<b" });
});

test("concepts are listed once per token, first bank first", () => {
  const concepts = allConcepts(LISTING);
  assert.deepEqual(concepts.map((c) => [c.token, c.bank]), [["<dog1>", "pets.safetensors"], ["<mug1>", "more.safetensors"]]);
  assert.deepEqual(allConcepts({}), []);
});

test("the loader's summary names each concept, or says why there is none", () => {
  assert.equal(bankSummary(LISTING, "pets.safetensors"), "<dog1>  dog (dog)");
  assert.match(bankSummary(LISTING, "broken.safetensors"), /not a safetensors file/);
  assert.match(bankSummary(LISTING, "empty.safetensors"), /no concepts yet/);
  assert.match(bankSummary(LISTING, "gone.safetensors"), /not found in models\/r2moe/);
});
