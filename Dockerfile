# syntax=docker/dockerfile:1
# The tidal worker image: `tidal run` on a pipeline YAML, /metrics on 9400, Kafka from the environment.
#
#   docker build -t tidal .                                   # lean: `pip install .` (scikit-learn, LightGBM)
#   docker build -t tidal --build-arg TIDAL_EXTRAS=detect,learn .   # with extras (pip install '.[detect,learn]')
#   docker run --rm -e TIDAL_BOOTSTRAP_SERVERS=broker:9092 -p 9400:9400 \
#       -v "$PWD/pipeline.yaml:/etc/tidal/pipeline.yaml:ro" tidal
#
# Kafka: TIDAL_BOOTSTRAP_SERVERS=host:port[,host:port]; any librdkafka setting as TIDAL_KAFKA_<NAME>,
# the name upper-cased with "." → "_" (TIDAL_KAFKA_SECURITY_PROTOCOL=SASL_SSL → security.protocol,
# TIDAL_KAFKA_SASL_MECHANISM=PLAIN, TIDAL_KAFKA_SASL_USERNAME / _PASSWORD), or a properties file
# mounted at the path in TIDAL_KAFKA_CONFIG. See src/tidal/config.py.
# SIGTERM (docker stop, a Kubernetes pod deletion) drains the batch in flight, commits and exits 0:
# give it the grace period to do so (compose stop_grace_period, terminationGracePeriodSeconds).

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
ARG TIDAL_EXTRAS=""
RUN python -m venv /opt/tidal \
 && /opt/tidal/bin/pip install ".${TIDAL_EXTRAS:+[${TIDAL_EXTRAS}]}" \
 && /opt/tidal/bin/tidal --help > /dev/null

FROM ${PYTHON_IMAGE}
# LightGBM's wheel links the OpenMP runtime, which the slim image lacks.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 tidal \
 && useradd --system --uid 10001 --gid tidal --home-dir /var/lib/tidal --shell /usr/sbin/nologin tidal \
 && mkdir -p /var/lib/tidal/registry /etc/tidal \
 && chown -R tidal:tidal /var/lib/tidal
COPY --from=build /opt/tidal /opt/tidal
# A default pipeline (the compose one); mount your own over it, or a ConfigMap in Kubernetes.
COPY deploy/compose/pipeline.yaml /etc/tidal/pipeline.yaml

ENV PATH=/opt/tidal/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TIDAL_HOME=/var/lib/tidal \
    TIDAL_REGISTRY=/var/lib/tidal/registry \
    TIDAL_METRICS_PORT=9400 \
    TIDAL_METRICS_HOST=0.0.0.0
# TIDAL_METRICS_HOST: /metrics binds 127.0.0.1 by default; in a container it must listen on every
# interface for Prometheus (and the probes) to reach it. The network policy decides who scrapes.

# Numeric, so that Kubernetes' runAsNonRoot can check it.
USER 10001:10001
WORKDIR /var/lib/tidal
EXPOSE 9400

# No curl in the slim image: Python fetches /metrics (a worker serves it once its pipeline loaded).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/live' % os.environ.get('TIDAL_METRICS_PORT', '9400'), timeout=4).read(1)"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["tidal"]
CMD ["run", "/etc/tidal/pipeline.yaml"]
