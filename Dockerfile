# syntax=docker/dockerfile:1
# The slm-operator image: the operator (`slm-operator run`), the GPU node agent (`slm-operator agent`), the
# gateway, the FineTuneJob sanitize step (`slm-operator sanitize`) and the advisor (`slm-operator advise`) all run
# from it.
#
#   docker build -t ghcr.io/slm-operator/slm-operator:0.1.0 .
#
# Stage 1 builds the project's wheel and the wheels of its dependencies; stage 2 installs them into a slim
# Python image without compilers, pip caches or the sources, and runs as the non-root user 65532.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ ./operator/
# With the [sanitize] extra (Presidio, spaCy and its pinned English NER model, docs/sanitization.md): the
# sanitize step's default classes include Person and Location, which need the model, and nothing is downloaded
# at run time.
# With the [advise] extra (scikit-learn, numpy: docs/loop.md): `slm-operator advise` runs from this image, and the
# gateway loads the task classifier it publishes.
# With the [solver] extra (OR-Tools): the operator can solve small pools exactly (docs/planner.md §5.1; off by
# default, the chart's operator.exactSolver.budgetSeconds turns it on). About 170 MB more (OR-Tools and pandas); imported only when a pool is small enough, when it adds
# about 80 MiB to the operator's memory.
RUN ["python", "-m", "pip", "wheel", "--wheel-dir=/wheels", ".[sanitize,advise,solver]"]

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="slm-operator" \
      org.opencontainers.image.description="Packs small language models onto MIG slices, MPS shares and time-sliced GPUs" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
# Only the wheels built above, no index: the image holds exactly what stage 1 resolved. The bind mount keeps
# the wheels out of the image's layers.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    ["python", "-m", "pip", "install", "--no-index", "--find-links=/wheels", "slm-operator[sanitize,advise,solver]"]
# The chart mounts an emptyDir on /tmp and makes the root filesystem read-only.
USER 65532:65532
WORKDIR /tmp
EXPOSE 8080 9090 9400
ENTRYPOINT ["slm-operator"]
CMD ["run"]
