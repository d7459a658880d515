"""The pack's single logger, so users can tune verbosity with one name."""

import logging

LOGGER = logging.getLogger("r2moe")
