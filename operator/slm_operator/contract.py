"""Every label, annotation and resource name the operator reads or writes."""
