"""Learning one concept as a new expert on the frozen model, independent of any host.

`trainer` (the trainable state, one optimisation step, settings), `request` (a concept to learn as a node's
widgets describe it, checked up front), `concept_photos` (photo folders, captions, square crops), `loss_plot`.
Imports `bank` and `moe`.
"""
