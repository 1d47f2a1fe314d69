"""Training configuration and architectures (no torch: the CLI builds its help from these)."""

from __future__ import annotations

from dataclasses import dataclass, field

ARCHS = {
    # name: (filters, n_highway, char dim, lstm dim, projection dim)
    "mini": ([[1, 32], [2, 32], [3, 64], [4, 128], [5, 256]], 1, 16, 512, 128),
    "small-512": ([[1, 32], [2, 32], [3, 64], [4, 128], [5, 256], [6, 512]], 1, 16, 1024, 128),
    "tiny": ([[1, 4], [2, 8], [3, 16]], 1, 4, 32, 16),
}


@dataclass
class TrainConfig:
    corpus: str
    out: str
    arch: str = "mini"
    init_from: str = ""  # an official-format model (directory or s3://) whose biLM starts the training
    vocab_size: int = 30000
    token_budget: int = 4096
    lr: float = 2e-3
    warmup_steps: int = 200
    max_minutes: float = 60.0
    max_steps: int = 0  # 0 = until max_minutes
    clip_norm: float = 1.0
    dropout: float = 0.1
    checkpoint_minutes: float = 5.0
    eval_every: int = 500
    eval_tokens: int = 60000
    seed: int = 1234
    threads: int = 2
    precision: str = "bf16"  # bf16: autocast matmuls/convolutions, fp32 state and softmax; fp32: all fp32
    cutoffs: list[int] = field(default_factory=lambda: [2000, 10000])
