"""Shared helpers for the R2MoE test tiers."""
