"""End-to-end tests against a real control plane (kube-apiserver, scheduler, controller-manager, kwok)."""
