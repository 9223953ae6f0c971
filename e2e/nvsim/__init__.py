"""NVIDIA-stack simulator for the e2e harness (not part of the product).

Plays the GPU Operator's mig-manager, the k8s-device-plugin's config-manager + device plugin, and
gpu-feature-discovery against kwok nodes, following NVIDIA's label/ConfigMap protocol. See docs/e2e.md.
Run: ``python -m e2e.nvsim --kubeconfig K [--namespace gpu-operator]``.
"""
