"""SLMRoute routing decisions, pure: which route and backend serve a call, when it falls back, the limits.

The gateway (:mod:`slm_operator.gateway`) is the shell around these functions; nothing here does I/O or reads a
clock (time and random draws are passed in), so property tests can replay any decision.

* :mod:`.features` — what a call looks like to the rules (its task: the header, else the route's classifier's
  tag; tools, prompt length estimate, JSON asked);
* :mod:`.table` — SLMRoutes compiled with their backends' endpoints, keys and limits; route resolution;
* :mod:`.rules` — rule matching, weighted splits, shadow copies;
* :mod:`.fallback` and :mod:`.jsoncheck` (with :mod:`.jsonschema`) — failure reasons and the fallback decision;
* :mod:`.activation` — scale from zero: which calls are held for a first replica, the answer after the wait;
* :mod:`.balance` — least outstanding requests over a backend's endpoints;
* :mod:`.limits` — per-caller token buckets;
* :mod:`.sse` — server-sent events of streamed answers;
* :mod:`.status` — the SLMRoute's status and conditions.
"""
