"""The bank and its file: everything R2MoE keeps between concepts.

`expert_bank` (the immutable bank: concepts and per-projection experts), `experts` (one LoRA expert and the
gated sum), `config` (hyper-parameters stored with the bank), `attention_targets` (which cross-attention K/V
projections are adapted), `fingerprint` (which base model a bank belongs to), `compatibility` (the checks run
before a bank is used), `bank_file` and `atomic_write` (the safetensors format, written so a crash never leaves a
half-written file), `trigger_tokens` (concept tokens in prompt text), `lora_export`, `report` (text and map).

Imports only `errors`, `log` and `version` from outside this package.
"""
