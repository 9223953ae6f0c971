"""The slm.io/v1alpha1 API: pydantic models (the single source of the CRD schemas), CRD and docs generation."""
