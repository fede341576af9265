# syntax=docker/dockerfile:1
# opd HTTP gateway: `opd-gateway` (FastAPI + uvicorn), a gRPC client of the teacher. Slim:
# no torch, no transformers (token strings come from the `tokenizers` library and the
# teacher's own tokenizer files). Build from the repository root:
#   docker build -f deploy/docker/gateway.Dockerfile -t opd-gateway .
# Settings come from flags or OPD_GATEWAY_* environment variables (opd_gateway/settings.py).

FROM python:3.11.13-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY protos/ protos/
COPY client/ client/
COPY services/gateway/ services/gateway/
# ./client without its `train` extra: the SDK only (grpcio, numpy, httpx).
RUN pip install --no-cache-dir ./protos ./client ./services/gateway \
    && python -c "import opd.teacher.v1.teacher_pb2_grpc, opd_gateway.app" \
    && ! python -c "import torch" 2>/dev/null

FROM python:3.11.13-slim-bookworm
RUN groupadd --gid 10001 opd \
    && useradd --create-home --uid 10001 --gid 10001 opd
COPY --from=build /opt/venv /opt/venv
COPY deploy/docker/healthcheck.py /opt/opd/healthcheck.py
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /home/opd
EXPOSE 8000
# Liveness of the gateway itself; /readyz would also fail while the teacher is down.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "/opt/opd/healthcheck.py", "http", "http://127.0.0.1:8000/healthz"]
ENTRYPOINT ["opd-gateway"]
CMD ["--host", "0.0.0.0", "--port", "8000", "--teacher", "teacher:50051"]
