"""lvm-gates: a test-first evaluation harness for latent vector models (LVMs).

Data flows one way: text -> chunks -> vectors (encoder) -> dataset (+ index) -> sequences ->
model -> predictions -> metrics -> gate status -> results -> leaderboard / regression check.
Each arrow is one module of this package.
"""

import os

__version__ = "0.1.0"

# A missing model otherwise retries the hub for over a minute; users opt in to downloads with
# LVM_ALLOW_DOWNLOAD=1 (see lvm.data.encoders).
if os.environ.get("LVM_ALLOW_DOWNLOAD") != "1":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
