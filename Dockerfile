# tuiwb in a container: `docker build -t tuiwb . && docker run -it --rm tuiwb demo`
# For GPUs, swap the torch index for a CUDA one and run with `--gpus all`.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HF_HUB_DISABLE_TELEMETRY=1 WANDB_MODE=disabled \
    XDG_CACHE_HOME=/cache
RUN useradd --create-home tuiwb && mkdir /cache && chown tuiwb /cache
WORKDIR /app

# torch first (CPU build), so the package's torch range is already satisfied.
RUN pip install "torch>=2.4,<2.15" --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY tuiwb ./tuiwb
COPY web_export ./web_export
RUN pip install ".[server]"

USER tuiwb
VOLUME ["/cache"]
ENTRYPOINT ["tuiwb"]
CMD ["--help"]
