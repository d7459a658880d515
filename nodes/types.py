"""Custom socket types (their strings are written into users' workflows: never rename)."""

from comfy_api.latest import io

Bank = io.Custom("R2MOE_BANK")
Layout = io.Custom("R2MOE_LAYOUT")
Sam = io.Custom("R2MOE_SAM")
