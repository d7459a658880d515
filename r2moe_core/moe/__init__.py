"""The mixture at sampling time: which experts serve a prompt, their cached deltas, and pruning.

`routing` (gate input, scores, top-k selection, selective activation), `routing_update` (the directions along
which a task may change the gate without touching old or plain prompts), `delta_cache` (expert deltas computed
once per text context and sampling run), `pruning` (layer-wise removal of a concept's expert where it gives
little of the mixture's output). Imports `bank`.
"""
