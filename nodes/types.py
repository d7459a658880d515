"""Custom socket types (their strings are written into users' workflows: never rename)."""

from comfy_api.latest import io

Bank = io.Custom("R2MOE_BANK")
Layout = io.Custom("R2MOE_LAYOUT")
Sam = io.Custom("R2MOE_SAM")

BANK_TIP = "An expert bank (from R2MoE New Bank, Load Bank or Train Concept)."
LAYOUT_TIP = "A layout: background prompt and boxed regions (from Layout Planner or Layout From JSON)."
SAM_TIP = "A Segment Anything model from R2MoE SAM Loader."
