# syntax=docker/dockerfile:1
# opd teacher for GPUs: `opd-teacher serve --backend vllm` (vLLM's async engine and its
# continuous batching), the production path. Build from the repository root:
#   docker build -f deploy/docker/teacher-gpu.Dockerfile -t opd-teacher-gpu .
# vLLM 0.32.0 pins torch 2.13.0 (the version the rest of opd is tested on) and brings
# its CUDA libraries as wheels; the CUDA base gives the driver-facing runtime. The model
# is mounted at /models/teacher (nothing is downloaded from a model hub).

FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04 AS build
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Ubuntu's security updates replace exact package versions; the base tag pins the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 python3.12-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3.12 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY protos/ protos/
COPY client/ client/
COPY services/teacher/ services/teacher/
# A normal (non-editable) install of ./protos runs its build hook, generating the contract.
RUN pip install --no-cache-dir vllm==0.32.0 torch==2.13.0 ./protos ./client \
        "./services/teacher[vllm]" \
    && python -c "import opd.teacher.v1.teacher_pb2_grpc, opd_teacher.server"

FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04
ENV DEBIAN_FRONTEND=noninteractive
# Triton (under vLLM) compiles small launchers at run time: it needs a C compiler and
# Python's headers. Versions: see the build stage.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 python3.12-dev gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 opd \
    && useradd --create-home --uid 10001 --gid 10001 opd \
    && mkdir -p /models \
    && chown opd:opd /models
COPY --from=build /opt/venv /opt/venv
COPY deploy/docker/healthcheck.py /opt/opd/healthcheck.py
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 OPD_CACHE_DIR=/models/cache \
    VLLM_CACHE_ROOT=/home/opd/.cache/vllm
USER 10001:10001
WORKDIR /home/opd
# 50051: gRPC (Score, health, reflection); 9100: Prometheus /metrics.
EXPOSE 50051 9100
# Readiness: NOT_SERVING while the model loads (minutes for a large one) and during a drain.
HEALTHCHECK --interval=10s --timeout=5s --start-period=1200s --retries=3 \
    CMD ["python", "/opt/opd/healthcheck.py", "grpc", "127.0.0.1:50051", "opd.teacher.v1.TeacherService"]
ENTRYPOINT ["opd-teacher"]
CMD ["serve", "--model", "/models/teacher", "--backend", "vllm", "--device", "cuda", \
     "--host", "0.0.0.0", "--port", "50051", "--metrics-port", "9100", "--log-format", "json"]
