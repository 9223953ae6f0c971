"""The FineTuneJob trainer: ``slm-operator train`` (docs/finetuning.md).

Only the ``train`` subcommand and the trainer image (``Dockerfile.trainer``, the ``[train]`` extra) load this
package; the operator never imports it (the ``layers`` import contract in pyproject.toml). Its pure modules
(``data``, ``metrics``, ``options``, ``report``) need no torch; the others (``encode``, ``model``, ``evaluate``,
``run``, ``tiny``) import torch, transformers and peft at their top.
"""

import logging

# bitsandbytes (imported by peft) warns at import, on a CPU without its optional kernels package, about a
# kernel only QLoRA on CPU would use; the trainer runs QLoRA only on CUDA, so the warning is noise in a pod's log.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
