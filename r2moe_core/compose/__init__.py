"""Several concepts in one image: layouts, planners, regional attention, masks.

`layout` (the typed, versioned layout JSON and box masks), `planner` (the interface), `rule_planner` and
`llm_planner` (prompt -> layout), `regional_attention` (each region's prompt through its own expert mixture,
blended by masks), `sam_loader` and `mask_refinement` (box-prompted SAM masks with a box fallback),
`layout_preview`. Imports `bank` and `moe`.
"""
