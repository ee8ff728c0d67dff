# One image for every component; docker-compose.yml picks the command per service.
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app

# Dependencies first, so code changes do not reinstall them.
COPY pyproject.toml README.md ./
RUN mkdir -p services gateway dev \
    && python -m pip install --upgrade pip \
    && pip install .

COPY services ./services
COPY gateway ./gateway
COPY dev ./dev
COPY Procfile ./

RUN useradd --system --uid 10001 --home /app app && mkdir -p /app/var && chown app /app/var
USER app

ENV ENVIRONMENT=production
EXPOSE 8080
CMD ["python", "-m", "gateway"]
