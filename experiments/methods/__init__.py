"""Reconnaissance methods under one interface (`Method`): prototypes (fedrecon, centralized) and baselines.

`METHODS` maps a method name to its class; every class is built as `cls(encoder, config)` and exposes
`learn(client, images, labels)`, `merge()`, `predict(client | None, images)`, `bytes_up`, `bytes_down`.
"""

from __future__ import annotations

from fedrecon.experiments.methods.base import Method
from fedrecon.experiments.methods.finetune import FedAvg, Lower, Upper
from fedrecon.experiments.methods.icarl import ICaRL
from fedrecon.experiments.methods.prototype import Centralized, FedRecon

METHODS: dict[str, type[Method]] = {
    "fedrecon": FedRecon,
    "centralized": Centralized,
    "lower": Lower,
    "upper": Upper,
    "icarl": ICaRL,
    "fedavg": FedAvg,
}

__all__ = ["METHODS", "Centralized", "FedAvg", "FedRecon", "ICaRL", "Lower", "Method", "Upper"]
