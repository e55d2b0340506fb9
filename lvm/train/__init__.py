"""Training: the trainer in named steps (``trainer``), its configuration (``config``), the learning
rate schedule and EMA weights (``schedule``) and the article-capped batch sampler (``sampler``).
Kill switches are the gate profile's epoch rules, judged by ``lvm.profiles`` for both the trainer
and the ``training_health`` gate, and decided by ``EpochGates`` (``epoch_gates``) for ``lvm train``,
any other training loop, ``lvm watch`` (``watch``: a foreign trainer's checkpoints) and the
Lightning callback (``lightning``, an optional extra).
"""

from lvm.train.config import TrainConfig
from lvm.train.epoch_gates import Decision, EpochGates
from lvm.train.trainer import EXIT_KILL_SWITCH, KillSwitch, Trainer

__all__ = ["EXIT_KILL_SWITCH", "Decision", "EpochGates", "KillSwitch", "TrainConfig", "Trainer"]
