"""The in-cluster gateway's Kubernetes touch points (official client, synchronous: run in threads).

What the gateway reads and writes, and the RBAC it needs for it (the chart grants exactly this):

* list/watch ``slmroutes``, ``slmdeployments`` and ``finetunejobs`` (slm.io, all namespaces), patch
  ``slmroutes/status``;
* list/watch ``endpointslices`` (discovery.k8s.io, all namespaces) labelled as the operator's Services are;
* list/watch the ``configmaps`` of the routes' task classifiers, one namespaced watch per ConfigMap (a
  ``metadata.name`` field selector), where a RoleBinding in the route's namespace allows it;
* patch ``slmdeployments`` (the annotation ``slm.io/activation-requested`` only: a call waits for a deployment at
  zero replicas, :mod:`slm_operator.gateway.activator`);
* ``get`` on the Secrets the routes name, one namespaced read each, where a RoleBinding in the route's namespace
  allows it (no cluster-wide read of Secrets);
* create ``tokenreviews`` and ``subjectaccessreviews`` (callers' ServiceAccount tokens and their ``use`` of routes);
* with ``--status-lease``: get, create and update that one ``leases`` object (coordination.k8s.io);
* create (and patch) ``events`` in the routes' namespaces: ``Promoted``, ``Demoted`` and ``ModelChanged`` on an
  SLMRoute.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes import watch as _watch
from kubernetes.client.exceptions import ApiException

from slm_operator.contract import (
    ACTIVATION_ANNOTATION,
    APP_MANAGED_BY_LABEL,
    DEPLOYMENTS_RESOURCE,
    GROUP,
    MANAGED_BY,
    ROUTE_USE_VERB,
    ROUTES_RESOURCE,
    VERSION,
)
from slm_operator.events import Event

log = logging.getLogger("slm_operator.gateway")
watch: Any = _watch  # kubernetes.watch has no annotations

#: the labels of the operator's Services, which Kubernetes copies onto their EndpointSlices
ENDPOINT_SLICE_SELECTOR = f"{APP_MANAGED_BY_LABEL}={MANAGED_BY}"
WATCH_TIMEOUT_SECONDS = 300
RETRY_SECONDS = 5.0
#: how long a watch RBAC refused waits before it tries again (a RoleBinding may have been added meanwhile)
FORBIDDEN_RETRY_SECONDS = 60.0
#: who posts the gateway's Events (``source.component``)
EVENT_COMPONENT = "slm-operator-gateway"


class SecretUnreadable(Exception):
    """The gateway may not read a Secret (403): the route's namespace has not granted it."""


@dataclass(frozen=True)
class TokenResult:
    authenticated: bool
    user: str = ""
    uid: str = ""
    groups: tuple[str, ...] = ()
    error: str = ""


Sink = Callable[[str, Any], None]  # (event type or "SYNC", object dict or list of dicts)


class KubeApi:
    """Lists, watches, reads and reviews through one API client."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api: Any = api
        self.custom = client.CustomObjectsApi(api)
        self.discovery = client.DiscoveryV1Api(api)
        self.core = client.CoreV1Api(api)
        self.authn = client.AuthenticationV1Api(api)
        self.authz = client.AuthorizationV1Api(api)
        self.coordination = client.CoordinationV1Api(api)

    # ------------------------------------------------------------------------------------- watches

    def _lister(self, kind: str) -> tuple[Callable[..., Any], dict[str, Any]]:
        if kind == "endpointslices":
            return self.discovery.list_endpoint_slice_for_all_namespaces, {
                "label_selector": ENDPOINT_SLICE_SELECTOR
            }
        return self.custom.list_cluster_custom_object, {"group": GROUP, "version": VERSION, "plural": kind}

    def watch_forever(self, kind: str, sink: Sink, stop: threading.Event) -> None:
        """List ``kind`` (``slmroutes``, ``slmdeployments``, ``endpointslices``, ``finetunejobs``), hand the list
        to ``sink`` as ("SYNC", items), then each change as (type, object); list again after an expired watch or
        an error."""
        lister, kw = self._lister(kind)
        self._watch(kind, lister, kw, sink, stop)

    def watch_configmap_forever(self, namespace: str, name: str, sink: Sink, stop: threading.Event) -> None:
        """``watch_forever`` for the one ConfigMap ``namespace/name`` (a task classifier's); when RBAC refuses
        it, ("UNREADABLE", what to grant) to ``sink`` and a new try after ``FORBIDDEN_RETRY_SECONDS``."""
        forbidden = (
            f"the gateway may not read ConfigMap {namespace}/{name}: grant it `list` and `watch` on "
            f"ConfigMaps in namespace {namespace} (the chart's gateway.routeNamespaces, docs/gateway.md)"
        )
        kw = {"namespace": namespace, "field_selector": f"metadata.name={name}"}
        self._watch(
            f"ConfigMap {namespace}/{name}", self.core.list_namespaced_config_map, kw, sink, stop, forbidden
        )

    def _watch(
        self,
        what: str,
        lister: Callable[..., Any],
        kw: dict[str, Any],
        sink: Sink,
        stop: threading.Event,
        forbidden: str | None = None,
    ) -> None:
        while not stop.is_set():
            try:
                listed = self.api.sanitize_for_serialization(lister(**kw))
                sink("SYNC", listed.get("items") or [])
                version = (listed.get("metadata") or {}).get("resourceVersion")
                w = watch.Watch()
                for event in w.stream(
                    lister, resource_version=version, timeout_seconds=WATCH_TIMEOUT_SECONDS, **kw
                ):
                    if stop.is_set():
                        w.stop()
                        return
                    obj = event.get("raw_object") or self.api.sanitize_for_serialization(event["object"])
                    if event["type"] == "ERROR":
                        break  # 410 Gone and the like: list again
                    sink(event["type"], obj)
            except ApiException as exc:
                if exc.status == 403 and forbidden is not None:
                    sink("UNREADABLE", forbidden)
                    stop.wait(FORBIDDEN_RETRY_SECONDS)
                    continue
                log.warning(
                    "watching %s failed (%s %s); listing again in %.0f s",
                    what,
                    exc.status,
                    exc.reason,
                    RETRY_SECONDS,
                )
                stop.wait(RETRY_SECONDS)
            except Exception:  # the connection dropped, the server restarted: keep the gateway serving
                log.exception("watching %s failed; listing again in %.0f s", what, RETRY_SECONDS)
                stop.wait(RETRY_SECONDS)

    # ------------------------------------------------------------------------------------- reads, writes

    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Secret as a dict, None when it does not exist; SecretUnreadable when RBAC refuses it."""
        try:
            secret = self.core.read_namespaced_secret(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            if exc.status == 403:
                raise SecretUnreadable(
                    f"the gateway may not read Secret {namespace}/{name}: grant it `get` on Secrets in namespace "
                    f"{namespace} (the chart's gateway.routeNamespaces, docs/gateway.md)"
                ) from None
            raise
        out: dict[str, Any] = self.api.sanitize_for_serialization(secret)
        return out

    def patch_route_status(self, namespace: str, name: str, status: dict[str, Any]) -> str | None:
        """Merge-patch the route's status; its resourceVersion after the write (None when not returned)."""
        out: Any = self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, ROUTES_RESOURCE, name, {"status": status}
        )
        meta = out.get("metadata") if isinstance(out, dict) else None
        version = meta.get("resourceVersion") if isinstance(meta, dict) else None
        return str(version) if version else None

    def request_activation(self, namespace: str, name: str, when: str) -> None:
        """Merge-patch the SLMDeployment's activation annotation to ``when`` (scale from zero)."""
        body = {"metadata": {"annotations": {ACTIVATION_ANNOTATION: when}}}
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, DEPLOYMENTS_RESOURCE, name, body
        )

    def post_event(self, event: Event) -> None:
        """A core/v1 Event on the object (as the operator's ``Kube.event`` posts them)."""
        body: Any = event.body(EVENT_COMPONENT, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        ns = body["metadata"]["namespace"]
        self.core.create_namespaced_event(ns, body)

    # ------------------------------------------------------------------------------------- status Lease

    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj = self.coordination.read_namespaced_lease(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        out: dict[str, Any] = self.api.sanitize_for_serialization(obj)
        return out

    def write_lease(
        self, namespace: str, name: str, spec: dict[str, Any], resource_version: str | None
    ) -> bool:
        """Create the Lease (no ``resource_version``) or replace that version of it; False on a conflict."""
        meta: dict[str, Any] = {"name": name, "namespace": namespace}
        body: Any = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}
        try:
            if resource_version is None:
                self.coordination.create_namespaced_lease(namespace, body)
            else:
                meta["resourceVersion"] = resource_version
                self.coordination.replace_namespaced_lease(name, namespace, body)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    # ------------------------------------------------------------------------------------- reviews

    def token_review(self, token: str) -> TokenResult:
        review = client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token))
        res: Any = self.authn.create_token_review(review)
        st = res.status
        if not st or not st.authenticated or not st.user:
            return TokenResult(False, error=(st.error if st else "") or "not authenticated")
        return TokenResult(True, st.user.username or "", st.user.uid or "", tuple(st.user.groups or ()))

    def access_review(self, user: str, uid: str, groups: tuple[str, ...], namespace: str, route: str) -> bool:
        """Whether ``user`` may ``use`` the SLMRoute ``namespace/route`` (a SubjectAccessReview)."""
        attrs = client.V1ResourceAttributes(
            group=GROUP, resource=ROUTES_RESOURCE, verb=ROUTE_USE_VERB, namespace=namespace, name=route
        )
        spec = client.V1SubjectAccessReviewSpec(
            user=user, uid=uid or None, groups=list(groups), resource_attributes=attrs
        )
        res: Any = self.authz.create_subject_access_review(client.V1SubjectAccessReview(spec=spec))
        return bool(res.status and res.status.allowed)


def start_watch(api: KubeApi, kind: str, sink: Sink, stop: threading.Event) -> threading.Thread:
    thread = threading.Thread(
        target=api.watch_forever, args=(kind, sink, stop), name=f"watch-{kind}", daemon=True
    )
    thread.start()
    return thread


def start_configmap_watch(
    api: KubeApi, namespace: str, name: str, sink: Sink, stop: threading.Event
) -> threading.Thread:
    thread = threading.Thread(
        target=api.watch_configmap_forever,
        args=(namespace, name, sink, stop),
        name=f"watch-configmap-{namespace}/{name}",
        daemon=True,
    )
    thread.start()
    return thread
