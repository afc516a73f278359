# llamarig: one Dockerfile, two bases. supervisord is PID 1 and runs every program of the rig.
#
# Production (the defaults): an NVIDIA CUDA base, llama-server and llama-cpp-python compiled with
# CUDA inside the build (the network is needed: the distribution's archive and PyPI).
#   docker build -t llamarig .
#   docker run --gpus all --stop-timeout 120 -p 8000:8000 -v /srv/models:/app/models:ro \
#     -v llamarig-run:/app/run -e LLAMARIG_CLIENT_KEYS=... -e LLAMARIG_OPERATOR_KEY=... llamarig
#
# CPU (the tests, and a rig without GPUs): a local Debian base (runtime/docker-base.sh) and the
# engines this host already built, from prebuilt/ (runtime/image-prebuilt.sh); no PyPI access.
#   docker build --network host -t llamarig:cpu --build-arg BUILD_BASE=local/debian:bookworm \
#     --build-arg RUN_BASE=local/debian:bookworm --build-arg ENGINE=cpu --build-arg ENGINES_FROM=prebuilt .
#
# Only the build arguments differ between the two: the bases (CUDA's libraries or none), ENGINE
# (CUDA or CPU build flags) and ENGINES_FROM (compile here, or take the host's builds), and the
# packages a compile needs. What the image does is the same line for line: user 10001, /app with
# runtime/, models/ (read-only volume) and run/ (writable volume), the entrypoint's checks, the
# rig rendered at each start, supervisord as PID 1, the health check, the stop signal.
#
# --stop-timeout must exceed the longest stopwaitsecs in supervisord.conf (compute-api:
# drain_s + 10 = 70 s), or Docker kills the bundle before the drain ends (Docker's default is 10 s).
ARG BUILD_BASE=nvidia/cuda:12.6.3-devel-ubuntu24.04
ARG RUN_BASE=nvidia/cuda:12.6.3-runtime-ubuntu24.04

FROM ${BUILD_BASE} AS build
ARG ENGINE=cuda
ARG ENGINES_FROM=source
# Differs: a compile needs cmake, a compiler and Python's headers; prebuilt engines need none.
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
      $([ "$ENGINES_FROM" = source ] && echo python3-dev cmake build-essential) \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY runtime/LLAMA_CPP_PYTHON_VERSION runtime/build-llama-server.sh runtime/image-engines.sh runtime/fail-line.sh runtime/
COPY prebuilt/ prebuilt/
RUN runtime/image-engines.sh server && runtime/image-engines.sh packages
COPY pyproject.toml ./
COPY src ./src
RUN runtime/image-engines.sh llamarig

FROM ${RUN_BASE}
# libgomp1: llama.cpp's OpenMP; curl: the health check.
RUN apt-get update && apt-get install -y --no-install-recommends python3 libgomp1 curl \
 && rm -rf /var/lib/apt/lists/* && useradd --create-home --uid 10001 llamarig
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
WORKDIR /app
COPY runtime/rig.yaml runtime/entrypoint.sh runtime/
COPY runtime/plans runtime/plans
# In a container the API must listen beyond loopback. Rendering once here fails the build on a
# rig that does not validate; the entrypoint renders again at each start (a mounted rig) into
# run/, and the link lets `docker exec NAME supervisorctl status` find it from /app.
RUN sed -i -e 's/^  host: 127.0.0.1$/  host: 0.0.0.0/' -e 's/^  temporal: embedded$/  temporal: cluster/' runtime/rig.yaml \
 && llamarig --rig runtime/rig.yaml render --out /tmp/supervisord.conf && rm /tmp/supervisord.conf \
 && mkdir -p models run && chown llamarig run && ln -s run/supervisord.conf supervisord.conf
VOLUME ["/app/models", "/app/run"]
USER llamarig
EXPOSE 8000
# HTTPS when the rig has a certificate (api.tls, or the LLAMARIG_TLS_* secrets): the check asks
# loopback for liveness only, so it does not check the name the certificate gives.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s CMD curl -fs http://127.0.0.1:8000/health \
  || curl -fsk https://127.0.0.1:8000/health || exit 1
STOPSIGNAL SIGTERM
# Checks what a start needs (exit 2 and one line if not), renders the rig into run/, then exec:
# supervisord replaces it as PID 1 (nodaemon=true).
ENTRYPOINT ["runtime/entrypoint.sh"]
