# llamarig on an NVIDIA CUDA base: llama-server and llama-cpp-python built with CUDA,
# supervisord as PID 1. No Docker engine runs where this project is developed, so this file
# is checked by reading, not by a build; see the notes of issue 4.
#
#   docker build -t llamarig .
#   docker run --gpus all --stop-timeout 120 -p 8000:8000 -v /srv/models:/app/models:ro \
#     -e LLAMARIG_CLIENT_KEYS=... -e LLAMARIG_OPERATOR_KEY=... llamarig
#
# The image listens on 0.0.0.0, so it refuses to start without a client key (exit 2, one line
# saying how to give one): -e LLAMARIG_CLIENT_KEYS=k1,k2, or a mounted file of keys named by
# -e LLAMARIG_CLIENT_KEYS_FILE=/run/secrets/llamarig-client-keys (likewise LLAMARIG_OPERATOR_KEY).
#
# --stop-timeout must exceed the longest stopwaitsecs in supervisord.conf (compute-api:
# drain_s + 10 = 70 s), or Docker kills the bundle before the drain ends.
FROM nvidia/cuda:12.6.3-devel-ubuntu24.04 AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-dev \
      cmake build-essential && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY runtime/LLAMA_CPP_PYTHON_VERSION runtime/build-llama-server.sh runtime/
RUN python3 -m venv /opt/venv && ln -s /opt/venv/bin/pip /usr/local/bin/pip \
 && PATH=/opt/venv/bin:$PATH LLAMARIG_CACHE=/opt/llamarig runtime/build-llama-server.sh --cuda
COPY pyproject.toml ./
COPY src ./src
RUN CMAKE_ARGS="-DGGML_CUDA=on" /opt/venv/bin/pip install .

FROM nvidia/cuda:12.6.3-runtime-ubuntu24.04
RUN apt-get update && apt-get install -y --no-install-recommends python3 libgomp1 curl \
 && rm -rf /var/lib/apt/lists/* && useradd --create-home --uid 10001 llamarig
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/llamarig/ /opt/llamarig/
RUN ln -s /opt/llamarig/llama-server-*-cuda/bin/llama-server /opt/venv/bin/llama-server
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
WORKDIR /app
COPY runtime ./runtime
# In a container the API must listen beyond loopback; the rendered file follows the rig.
RUN sed -i 's/^  host: 127.0.0.1$/  host: 0.0.0.0/' runtime/rig.yaml && llamarig render \
 && mkdir -p models run && chown -R llamarig /app/run
VOLUME ["/app/models"]
USER llamarig
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s CMD curl -fs http://127.0.0.1:8000/health || exit 1
STOPSIGNAL SIGTERM
# Checks the rig and the keys, then exec: supervisord replaces it and runs as PID 1 (nodaemon=true).
ENTRYPOINT ["runtime/entrypoint.sh"]
