"""The kopf shell: the only code that talks to the Kubernetes API for the operator (see docs/architecture.md)."""
