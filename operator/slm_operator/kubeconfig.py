"""Reaching the API server, one way for every process that does (the operator, the gateway, the node agent)."""

from __future__ import annotations

import os

from kubernetes import client, config

#: what to do about an unusable configuration, said by the operator and the node agent
KUBECONFIG_HINT = "pass --kubeconfig PATH or set KUBECONFIG"


class KubeConfigError(Exception):
    """No usable way to reach the API server (not in a pod, and no readable kubeconfig)."""


def load_config(kubeconfig: str | None = None, *, hint: str = KUBECONFIG_HINT) -> client.ApiClient:
    """The kubeconfig when given, else the pod's ServiceAccount, else $KUBECONFIG or ~/.kube/config.
    ``hint`` ends the error's message: what the user of this command can do about it."""
    try:
        if kubeconfig:
            raise config.ConfigException("explicit kubeconfig")
        config.load_incluster_config()  # type: ignore[no-untyped-call]  # kubernetes.config has no annotations
    except config.ConfigException:
        try:
            config.load_kube_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]  # same
        except (config.ConfigException, OSError) as exc:
            where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
            raise KubeConfigError(
                f"cannot reach a Kubernetes API server: not running in a pod, and the kubeconfig {where} "
                f"cannot be used ({exc}); {hint}"
            ) from None
    return client.ApiClient()
