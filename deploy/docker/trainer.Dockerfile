# syntax=docker/dockerfile:1
# opd trainer: `opd-train run CONFIG` (opd-client[train]: torch, transformers). One
# container per student job; the config is mounted, checkpoints go to a volume of its own
# and a restarted container resumes from the last checkpoint. Build from the repository root:
#   docker build -f deploy/docker/trainer.Dockerfile -t opd-trainer .
# CPU torch by default; for GPU students pass a CUDA index, e.g.
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

FROM python:3.11.13-slim-bookworm AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
RUN pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" torch==2.13.0
COPY protos/ protos/
COPY client/ client/
# A normal (non-editable) install of ./protos runs its build hook, generating the contract.
RUN pip install --no-cache-dir torch==2.13.0 ./protos "./client[train]" \
    && python -c "import opd.teacher.v1.teacher_pb2_grpc, opd_client.train.loop"

FROM python:3.11.13-slim-bookworm
RUN groupadd --gid 10001 opd \
    && useradd --create-home --uid 10001 --gid 10001 opd \
    && mkdir -p /models /checkpoints /runs \
    && chown opd:opd /models /checkpoints /runs
COPY --from=build /opt/venv /opt/venv
COPY deploy/docker/healthcheck.py deploy/docker/prepare_models.py /opt/opd/
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 OPD_CACHE_DIR=/models/cache \
    MPLCONFIGDIR=/tmp/matplotlib OPD_TEACHER=teacher:50051
USER 10001:10001
WORKDIR /home/opd
# A trainer is a batch job: "healthy" says it can reach its teacher (liveness needs no
# token). OPD_TEACHER must name the same teacher as the run's config.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["sh", "-c", "exec python /opt/opd/healthcheck.py grpc \"$OPD_TEACHER\" liveness"]
ENTRYPOINT ["opd-train"]
CMD ["--help"]
