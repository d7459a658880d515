"""Region masks beyond boxes: segment-anything loading and the refinement of box masks into object masks."""
