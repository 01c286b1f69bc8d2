# The tailor image: every Tailor process (`tailor apply`, `tailor flow`, `tailor copy generate`,
# later the API) runs from it. compose.yaml builds it; by hand: docker build -t tailor .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Only what the package needs: no virtualenv, no local feature_repo/data, no tests.
# (README.md only feeds the package description; setuptools warns without it.)
# Every package pyproject.toml lists (tests/unit/test_compose.py checks the two agree); the
# copy model is not built in: compose mounts ./models/artifacts (see .dockerignore).
COPY pyproject.toml ./
COPY engine/ engine/
COPY config/ config/
COPY store/ store/
COPY flows/ flows/
COPY api/ api/
COPY models/ models/
COPY jobs/ jobs/
COPY cli/ cli/
COPY demo/ demo/
COPY dev/ dev/
COPY bench/ bench/
COPY feature_repo/__init__.py feature_repo/features.py feature_repo/feature_store.yaml feature_repo/

# /data (flow recovery) and the Feast data folder are volume mount points: created here,
# owned by the runtime user, so fresh named volumes inherit a writable owner.
RUN pip install . \
 && useradd --system --uid 10001 --no-create-home --home-dir /app tailor \
 && mkdir -p /data /app/feature_repo/data \
 && chown tailor /data /app/feature_repo/data

USER tailor
ENV TAILOR_FEATURE_REPO=/app/feature_repo

# Bytewax's dataflow API and Prometheus metrics, when BYTEWAX_DATAFLOW_API_ENABLED=true.
EXPOSE 3030

CMD ["tailor", "--help"]
