"""A stand-in for the kubelet and the container runtime, for the pods of the e2e cluster that can run on a CPU.

kwok (the e2e cluster's nodes) runs no containers. This host kubelet runs the containers of the pods it is told
to (a label; the e2e suite gives it ``slm.io/finetunejob``, the label of a FineTuneJob's Job pods) as host
processes: the image's ENTRYPOINT from this repository's Dockerfile, run from a virtualenv, with the pod's volumes
as host directories, and reports their states, exit codes and termination messages into the pod's status the way
a kubelet does. It is not a test double of the operator: like ``e2e/nvsim`` it imports nothing from
``slm_operator`` and models the upstream component (the kubelet, containerd), with the rules cited where they
are written. See docs/e2e.md section 5.

    PYTHONPATH=. .venv/bin/python -m e2e.hostkubelet --kubeconfig KUBECONFIG --label slm.io/finetunejob
"""
