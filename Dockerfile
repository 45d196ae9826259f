# tuiwb in a container (CPU): `docker build -t tuiwb . && docker run -it --rm tuiwb demo`
# The GPU variant is Dockerfile.cuda. Neither was built on the development machine (no Docker engine there).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HF_HUB_DISABLE_TELEMETRY=1 WANDB_MODE=disabled \
    XDG_CACHE_HOME=/cache
RUN useradd --create-home tuiwb && mkdir /cache && chown tuiwb /cache
WORKDIR /app

# torch first, from PyPI (no second package index), so the package's torch range is already satisfied.
# PyPI's Linux arm64 wheel is CPU-only; its x86_64 wheel also carries the CUDA runtime wheels (a larger
# image that runs the same on CPU). TORCH_SPEC may name a local wheel file instead (COPY it in first).
ARG TORCH_SPEC="torch==2.13.0"
RUN pip install "$TORCH_SPEC"
COPY pyproject.toml README.md LICENSE ./
COPY tuiwb ./tuiwb
COPY web_export ./web_export
# The companion page's d3 from the npm registry (web_export/package-lock.json); the server finds the page
# through TUIWB_WEB_DIR because a non-editable install does not sit next to web_export/.
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends nodejs npm \
    && (cd web_export && npm ci --no-audit --no-fund --silent) \
    && apt-get purge -y -qq npm && apt-get autoremove -y -qq && rm -rf /var/lib/apt/lists/*
ENV TUIWB_WEB_DIR=/app/web_export
RUN pip install ".[server]"

USER tuiwb
VOLUME ["/cache"]
ENTRYPOINT ["tuiwb"]
CMD ["--help"]
