"""LoRA adapters: where the bytes come from (`files`), what is resident (`registry`).

How the weights meet the model lives in `covergen.engine.lora_layers`.
"""
