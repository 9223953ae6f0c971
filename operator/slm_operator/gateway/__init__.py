"""The gateway (``slm-operator gateway``): one OpenAI-compatible endpoint for agents in front of the SLMRoutes.

The shell around :mod:`slm_operator.routing`: ``server`` (aiohttp handlers), ``upstream`` (attempts, retries
before the first byte, streams), ``dispatch`` (slots per endpoint, queues per backend), ``auth`` (API keys;
ServiceAccounts in the cluster), ``classifiers`` (the routes' task classifiers, from ConfigMaps), ``metrics``
(Prometheus), ``standalone`` (``-f FILE...`` without a cluster).
docs/gateway.md is the user's guide.
"""
