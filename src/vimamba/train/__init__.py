"""Training infrastructure and the classification trainer.

Task-agnostic building blocks (also used by the dense-prediction code):

- :mod:`.distributed`   torchrun/env initialisation, rank helpers, rank-0 printing, metric all-reduce, seeding
- :mod:`.checkpointing` atomic ``last``/``best`` checkpoints with full training state, resume, SIGINT/SIGTERM
- :mod:`.precision`     bf16 / fp16 / fp32 training with a guard against non-finite losses and gradients
- :mod:`.optim`         AdamW with linear LR scaling, weight-decay groups, layer decay, per-iteration cosine
- :mod:`.sampling`      seed/epoch-determined sharded samplers that resume mid-epoch
- :mod:`.reporting`     progress bars, JSON-lines metrics log, curve plots, summaries
"""
