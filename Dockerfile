# syntax=docker/dockerfile:1
# tokenrelay: one image for every host of docs/deploy.md (compose.yaml runs two of them behind
# nginx, with PostgreSQL and Redis).
#
#   docker build -t tokenrelay .
#   docker run --rm -p 8000:8000 tokenrelay                      # the embedded model, SQLite
#   docker run --rm -p 8000:8000 -e TOKENRELAY_MODEL=openai:gpt-4o-mini -e OPENAI_API_KEY=... tokenrelay
#
# Settings are TOKENRELAY_* environment variables (README "Configuration"); arguments after the
# image name replace `serve` (e.g. `serve --workers 4 --log-level debug`).

FROM python:3.13-slim AS build
# llama-cpp-python compiles llama.cpp from source here (a few minutes); the runtime image only
# gets the wheels.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[postgres,redis]"

FROM python:3.13-slim
# libgomp: llama.cpp's OpenMP threads
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 tokenrelay
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels "tokenrelay[postgres,redis]" \
 && rm -rf /wheels
USER tokenrelay
ENV PYTHONUNBUFFERED=1 \
    TOKENRELAY_HOST=0.0.0.0 \
    TOKENRELAY_PORT=8000 \
    TOKENRELAY_LOG_LEVEL=info
EXPOSE 8000
# /health is a liveness check of the worker that answers (docs/deploy.md "Health checks")
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)"]
ENTRYPOINT ["tokenrelay"]
CMD ["serve"]
