# harness worker image. The embedded model is not needed here: docker-compose runs the
# model server as its own service (llm) and points the worker at it.
FROM python:3.11-slim

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY harness ./harness
COPY agents ./agents
COPY tools ./tools
COPY config ./config
RUN pip install --no-cache-dir '.[postgres]'

# The workspace is /workspace (mount your own, or use the default team baked in here).
RUN harness init /workspace
WORKDIR /workspace
ENV HARNESS_WORKSPACE=/workspace
STOPSIGNAL SIGTERM
CMD ["harness", "--log-json", "worker"]
