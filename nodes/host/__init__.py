"""The ComfyUI adapters the nodes share: patches on a MODEL, the training host, model inspection and folders.

Nothing here is a node; the node modules (`nodes/*_nodes.py`) are thin over these and the core."""
