# syntax=docker/dockerfile:1
# opd teacher for CPU: `opd-teacher serve --backend hf` (transformers on CPU torch). Runs
# anywhere, e.g. the compose `cpu` profile and the kustomize `cpu` overlay on the tiny
# demo models. Build from the repository root:
#   docker build -f deploy/docker/teacher-cpu.Dockerfile -t opd-teacher-cpu .
# The model is mounted at /models/teacher (nothing is downloaded from a model hub).

FROM python:3.11.13-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# CPU torch from PyTorch's CPU index first: from PyPI, torch would bring CUDA (several GB).
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY protos/ protos/
COPY client/ client/
COPY services/teacher/ services/teacher/
# A normal (non-editable) install of ./protos runs its build hook (protos/hatch_build.py),
# which generates the contract's code; .dockerignore keeps any local copy out.
RUN pip install --no-cache-dir torch==2.13.0 ./protos ./client ./services/teacher \
    && python -c "import opd.teacher.v1.teacher_pb2_grpc, opd_teacher.server"

FROM python:3.11.13-slim-bookworm
RUN groupadd --gid 10001 opd \
    && useradd --create-home --uid 10001 --gid 10001 opd \
    && mkdir -p /models \
    && chown opd:opd /models
COPY --from=build /opt/venv /opt/venv
COPY deploy/docker/healthcheck.py /opt/opd/healthcheck.py
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 OPD_CACHE_DIR=/models/cache
USER 10001:10001
WORKDIR /home/opd
# 50051: gRPC (Score, health, reflection); 9100: Prometheus /metrics.
EXPOSE 50051 9100
# Readiness: NOT_SERVING while the model loads and during a drain.
HEALTHCHECK --interval=10s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "/opt/opd/healthcheck.py", "grpc", "127.0.0.1:50051", "opd.teacher.v1.TeacherService"]
ENTRYPOINT ["opd-teacher"]
CMD ["serve", "--model", "/models/teacher", "--backend", "hf", "--device", "cpu", \
     "--host", "0.0.0.0", "--port", "50051", "--metrics-port", "9100", "--log-format", "json"]
