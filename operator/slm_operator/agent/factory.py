"""Pick the NVML implementation: the real one, or a fake fleet when the test-only variable asks for it."""

from __future__ import annotations

import os

from slm_operator.agent.interface import Nvml

#: TEST ONLY. Names a fake fleet of :mod:`slm_operator.agent.fake` (``h100-mig``, ``a100``, ``l4``, ``mixed``,
#: ``gpu-error``, ``none``) that the agent reads instead of the GPUs; used by the e2e tests on kwok nodes.
#: Never set it on a real node: the agent would publish made-up GPUs.
FAKE_FLEET_ENV = "SLM_AGENT_FAKE_FLEET"


def make_nvml(node: str = "fake", environ: dict[str, str] | None = None) -> Nvml:
    """The NVML implementation for this process (``node`` seeds the fake fleets' UUIDs)."""
    env = os.environ if environ is None else environ
    fleet_name = env.get(FAKE_FLEET_ENV, "").strip()
    if fleet_name == "none":
        from slm_operator.agent.null import NullNvml

        return NullNvml(f"no driver (fake fleet 'none' from ${FAKE_FLEET_ENV})")
    if fleet_name:
        from slm_operator.agent.fake import fleet

        return fleet(fleet_name, node or "fake")
    from slm_operator.agent.nvml import PynvmlNvml

    return PynvmlNvml()
