# Consumer image: `docker build -t kafka-parquet-consumer .` then
#   docker run --rm -e KAFKA_BOOTSTRAP_SERVERS=... -e CONSUMER_TOPICS=... -e CONSUMER_GROUP_ID=... \
#     -e CONSUMER_OUTPUT=s3://bucket/prefix kafka-parquet-consumer
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first (better layer caching), then the package itself.
COPY pyproject.toml README.md* ./
COPY consumer ./consumer
COPY schemas ./schemas
RUN pip install . \
    && useradd --system --uid 10001 --no-create-home consumer

USER consumer
ENTRYPOINT ["consumer"]
CMD ["run"]
