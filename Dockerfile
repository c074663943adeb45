# The code location's image, for Dagster+ hybrid and Kubernetes user-code deployments.
FROM python:3.11-slim
WORKDIR /opt/amplitude_assets
COPY pyproject.toml README.md ./
COPY amplitude_assets ./amplitude_assets
RUN pip install --no-cache-dir .
EXPOSE 3030
CMD ["dagster", "api", "grpc", "-h", "0.0.0.0", "-p", "3030", "-m", "amplitude_assets.definitions"]
