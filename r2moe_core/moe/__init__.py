"""The mixture at sampling time: which experts serve a prompt, their cached deltas, and pruning.

`routing` (gate input, scores, top-k selection, selective activation), `delta_cache` (expert deltas computed
once per text context and sampling run), `pruning` (layer-wise removal of a concept's expert where its gate
weight is low). Imports `bank`.
"""
