"""The advisor (``slm-operator advise``): from captured calls to SLMs, steps S3 and S4 of the LLM-to-SLM loop.

Pure core: ``records`` (the input), ``traces`` (a seeded generator of agent traces with ground-truth labels),
``features`` and ``cluster`` (S3: the recurring tasks in the traffic, and the classifier the gateway tags calls
with), ``select`` (S4: a model and a GPU share per task, planned against the pool with the planner), ``report``
and ``manifests`` (what the user reviews or applies). The CLI reads the files or the usage store and writes the
results; nothing here does I/O.
"""
