"""Training: the trainer in named steps (``trainer``), its configuration (``config``), the learning
rate schedule and EMA weights (``schedule``) and the article-capped batch sampler (``sampler``).
Kill switches are the gate profile's epoch rules, judged by ``lvm.profiles`` for both the trainer
and the ``training_health`` gate.
"""
