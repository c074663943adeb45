# The code location's image: its gRPC code server by default (Dagster+ hybrid, the Helm chart's
# user deployment). The same image runs the webserver and the daemon (deploy/docker-compose.yaml,
# deploy/helm/values.yaml), since they load the instance and its compute log manager, which is in
# amplitude_assets.
FROM python:3.11-slim
WORKDIR /opt/amplitude_assets
COPY pyproject.toml README.md ./
COPY amplitude_assets ./amplitude_assets
# [deploy]: PostgreSQL instance storage. dagster-k8s (the release paired with dagster 1.13.27):
# the Helm chart's K8sRunLauncher, loaded by the daemon and the run pods.
RUN pip install --no-cache-dir ".[deploy]" "dagster-k8s==0.29.27"
EXPOSE 3030
CMD ["dagster", "api", "grpc", "-h", "0.0.0.0", "-p", "3030", "-m", "amplitude_assets.definitions"]
