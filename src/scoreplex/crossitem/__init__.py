"""One model across items: a task-conditioned scorer for item banks of many small items.

* :mod:`~scoreplex.crossitem.model` — the scorer (one LoRA-adapted encoder over ``question [SEP] response`` pairs, a
  head per item) and :func:`~scoreplex.crossitem.model.pairing_text`;
* :mod:`~scoreplex.crossitem.method` — the ``cross-item`` suite format (the registry's method object);
* :mod:`~scoreplex.crossitem.train` — :func:`train_cross_item` (all items at once, one training loop) and
  :func:`add_item` (a new item's head on the frozen cross-item encoder).
"""

import scoreplex.methods  # noqa: F401  (the registry imports .method: let it go first, or the import is circular)
from scoreplex.crossitem.method import SHARED_NAME, CrossItemMethod
from scoreplex.crossitem.model import CrossItemModel, pairing_text

__all__ = [
    "SHARED_NAME",
    "CrossItemMethod",
    "CrossItemModel",
    "add_item",
    "pairing_text",
    "train_cross_item",
]


def __getattr__(name: str):  # the training functions import the training stack: load it on first use
    if name in ("add_item", "train_cross_item", "CrossItemSettings"):
        from scoreplex.crossitem import train

        return getattr(train, name)
    raise AttributeError(name)
