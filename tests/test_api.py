"""The public API accepts what users write and round-trips through the generated schema."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest
import yaml

from slm_operator.api.crdgen import crd_for
from slm_operator.api.quantity import QuantityError, format_bytes, parse_quantity, quantity_bytes
from slm_operator.api.v1alpha1 import (
    KINDS,
    FineTuneJob,
    GPUPool,
    LendTo,
    Mechanism,
    QoSTier,
    SLMDeployment,
)
from slm_operator.manifests import load_manifests
from tests.structural import validate

ROOT = Path(__file__).resolve().parent.parent

ISSUE_MANIFESTS = """
apiVersion: slm.io/v1alpha1
kind: GPUPool
metadata: {name: h100}
spec:
  nodeSelector: {matchLabels: {nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3}}
  sharing:
    mechanisms: [MIG, MPS, TimeSlicing, Exclusive]
    mps: {maxClientsPerGPU: 8}
    timeSlicing: {maxReplicasPerGPU: 8, memoryOversubscriptionPercent: 150}
  reservations:
  - {name: llm-fallback, purpose: LLMFallback, gpus: 2, lendTo: BestEffort}
  segments:
  - {name: finetune, purpose: FineTuning, gpus: 1}
---
apiVersion: slm.io/v1alpha1
kind: SLMDeployment
metadata: {name: invoice-extractor, namespace: agents}
spec:
  poolRef: {name: h100}
  model: {name: qwen2.5-3b-instruct, quantization: BF16, maxContextTokens: 8192, maxConcurrentSequences: 8}
  replicas: 3
  qos: Guaranteed
  runtime: {image: vllm/vllm-openai:v0.33.0}
---
apiVersion: slm.io/v1alpha1
kind: FineTuneJob
metadata: {name: extractor-lora-1, namespace: agents}
spec:
  poolRef: {name: h100}
  segment: finetune
  baseModel: qwen2.5-3b-instruct
  method: LoRA
  dataset: {configMapRef: {name: extractor-calls}}
  sanitization: {redact: [Email, PhoneNumber, CreditCard, APIKey, IPAddress]}
  output: {pvc: {claimName: adapters, path: extractor/v1}}
  promote: {slmDeploymentRef: {name: invoice-extractor}}
"""


def test_issue_manifests_are_accepted_as_written() -> None:
    docs = list(yaml.safe_load_all(ISSUE_MANIFESTS))
    pool = GPUPool.model_validate(docs[0])
    dep = SLMDeployment.model_validate(docs[1])
    job = FineTuneJob.model_validate(docs[2])
    assert pool.spec.sharing.mps.max_clients_per_gpu == 8
    assert pool.spec.sharing.time_slicing.memory_oversubscription_percent == 150
    assert pool.spec.reservations and pool.spec.reservations[0].lend_to is LendTo.BEST_EFFORT
    assert pool.spec.sharing.mechanisms == [
        Mechanism.MIG,
        Mechanism.MPS,
        Mechanism.TIME_SLICING,
        Mechanism.EXCLUSIVE,
    ]
    assert dep.spec.qos is QoSTier.GUARANTEED and dep.spec.replicas == 3
    assert dep.spec.model.max_context_tokens == 8192
    assert job.spec.promote and job.spec.promote.slm_deployment_ref.name == "invoice-extractor"
    # Serialising gives back what the user wrote (plus defaults), in camelCase.
    assert pool.to_k8s()["spec"]["sharing"]["timeSlicing"]["maxReplicasPerGPU"] == 8
    assert dep.to_k8s()["spec"]["model"]["maxConcurrentSequences"] == 8


def test_defaults_fill_in_what_users_leave_out() -> None:
    dep = SLMDeployment.model_validate(
        {
            "apiVersion": "slm.io/v1alpha1",
            "kind": "SLMDeployment",
            "metadata": {"name": "a", "namespace": "b"},
            "spec": {"poolRef": {"name": "p"}, "model": {"name": "qwen2.5-0.5b-instruct"}},
        }
    )
    assert dep.spec.replicas == 1
    assert dep.spec.qos is QoSTier.BURSTABLE
    assert dep.spec.suspend is False
    assert dep.spec.runtime.port == 8000


def test_every_example_parses() -> None:
    m = load_manifests([ROOT / "examples"])
    assert {p.metadata.name for p in m.pools} == {
        "h100",
        "l4",
        "shared-a100",
    }  # shared-a100: examples/tenants/
    assert len(m.deployments) >= 12
    assert {d.spec.qos for d in m.deployments} == set(QoSTier)
    assert len(m.finetune_jobs) == 1
    assert [r.metadata.name for r in m.routes] == ["agent-llm"]
    assert {s["metadata"]["name"] for s in m.secrets} == {"agent-api-keys", "llm-api-key"}
    assert len(m.nodes) >= 5


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("12Gi", Fraction(12 * 2**30)),
        ("1500m", Fraction(3, 2)),
        ("1.5Gi", Fraction(3 * 2**29)),
        ("2e3", Fraction(2000)),
        ("512M", Fraction(512 * 10**6)),
        ("0.1", Fraction(1, 10)),
        ("100Ki", Fraction(102400)),
        ("3", Fraction(3)),
    ],
)
def test_quantities_parse_exactly(text: str, value: Fraction) -> None:
    assert parse_quantity(text) == value


def test_quantity_bytes_and_format() -> None:
    assert quantity_bytes("20Gi") == 20 * 2**30
    assert quantity_bytes("1.5") == 2  # fractional bytes round up
    assert format_bytes(20 * 2**30) == "20Gi"
    assert format_bytes(19968 * 2**20) == "19968Mi"
    with pytest.raises(QuantityError, match="not a Kubernetes quantity"):
        parse_quantity("20 GB")


def test_generated_schema_accepts_every_example_round_tripped() -> None:
    m = load_manifests([ROOT / "examples"])
    objs = [*m.pools, *m.deployments, *m.finetune_jobs, *m.routes]
    for obj in objs:
        crd = crd_for(KINDS[obj.kind])
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        dumped = obj.to_k8s()
        dumped["metadata"] = {"name": obj.metadata.name}
        assert validate(dumped, schema) == [], obj.metadata.name
        # and the dump parses back to the same object
        assert type(obj).model_validate(dumped).spec == obj.spec
