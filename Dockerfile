# One Dockerfile, one target per role:
#
#   docker build --target trainer -t recsys-two-tower/trainer .
#   docker build --target query   -t recsys-two-tower/query .
#   docker build --target index   -t recsys-two-tower/index .
#   docker build --target gateway -t recsys-two-tower/gateway .
#
# Only the trainer and query targets install TensorFlow (pyproject extras
# "trainer" and "query"). The index target adds ScaNN ("index", which does not
# pull in TensorFlow) and the gateway only the base dependencies, so those two
# images stay small and cannot import TensorFlow even by accident. Each target
# also copies only its own package plus the shared serving/ and protos/, so no
# service image holds another service's code. tests/test_deploy_compose.py
# checks both.
#
# The generated gRPC stubs are committed under protos/: no codegen here.

FROM python:3.11-slim AS runtime
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OPENBLAS_NUM_THREADS=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
# A fixed numeric uid/gid: Kubernetes' runAsNonRoot can check it, and fsGroup
# and volume ownership match across all four images. /models is owned by it so
# that a new Docker named volume mounted there inherits that owner and the
# (non-root) trainer can write bundles into it.
RUN groupadd --system --gid 10001 recsys \
 && useradd --system --uid 10001 --gid recsys --create-home --home-dir /home/recsys \
        --shell /usr/sbin/nologin recsys \
 && mkdir -p /models \
 && chown recsys:recsys /models
WORKDIR /app

# Dependencies first, from pyproject.toml alone: no package folder is copied
# yet, so "." builds an empty distribution and pip installs only the
# requirements. Editing code then reuses this layer instead of reinstalling.
FROM runtime AS deps
COPY pyproject.toml ./
RUN pip install --no-cache-dir . && rm -rf build ./*.egg-info

FROM deps AS trainer
ENV TF_USE_LEGACY_KERAS=1 \
    MPLBACKEND=Agg \
    MODEL_BASE=/models/movielens
RUN pip install --no-cache-dir ".[trainer]"
COPY protos/ protos/
COPY serving/ serving/
COPY trainer/ trainer/
RUN pip install --no-cache-dir --no-deps . && rm -rf build ./*.egg-info
USER 10001:10001
CMD ["python", "-m", "trainer", "train"]

FROM deps AS query
ENV TF_USE_LEGACY_KERAS=1 \
    MODEL_BASE=/models/movielens
RUN pip install --no-cache-dir ".[query]"
COPY protos/ protos/
COPY serving/ serving/
COPY query_service/ query_service/
RUN pip install --no-cache-dir --no-deps . && rm -rf build ./*.egg-info
USER 10001:10001
EXPOSE 50052
HEALTHCHECK --interval=5s --timeout=3s --start-period=120s --retries=3 \
    CMD python -m serving.healthcheck --address "127.0.0.1:${QUERY_PORT:-50052}" --service recsys.internal.v1.QueryService
CMD ["python", "-m", "query_service"]

FROM deps AS index
ENV MODEL_BASE=/models/movielens
RUN pip install --no-cache-dir ".[index]"
COPY protos/ protos/
COPY serving/ serving/
COPY index_service/ index_service/
RUN pip install --no-cache-dir --no-deps . && rm -rf build ./*.egg-info
USER 10001:10001
EXPOSE 50053
HEALTHCHECK --interval=5s --timeout=3s --start-period=60s --retries=3 \
    CMD python -m serving.healthcheck --address "127.0.0.1:${INDEX_PORT:-50053}" --service recsys.internal.v1.IndexService
CMD ["python", "-m", "index_service"]

# Last, so a plain `docker build .` builds the smallest image.
FROM deps AS gateway
COPY protos/ protos/
COPY serving/ serving/
COPY gateway/ gateway/
RUN pip install --no-cache-dir --no-deps . && rm -rf build ./*.egg-info
USER 10001:10001
EXPOSE 50051
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
    CMD python -m serving.healthcheck --address "127.0.0.1:${GATEWAY_PORT:-50051}" --service recsys.v1.Gateway
CMD ["python", "-m", "gateway"]
