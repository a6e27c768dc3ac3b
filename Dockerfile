# wildvision serve: the HTTP service with the shipped model, on CPU.
#   docker build -t wildvision .
#   docker run -p 8000:8000 -e WILDVISION_API_KEYS=change-me wildvision
# Options after the image name are added to `wildvision serve`'s, e.g. `docker run ... wildvision --max-concurrency 4`
# (keep port 8000 inside the container: the health check asks there).
FROM python:3.12-slim

# Only what the wheel is built from (pyproject.toml names README.md and LICENSE; models/ holds the shipped model).
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY wildvision ./wildvision
COPY models ./models
RUN pip install --no-cache-dir ".[serve]" && rm -rf /src

# Never root: the service needs to read its model and listen, nothing more.
RUN useradd --system --uid 10001 --no-create-home wildvision
USER wildvision
WORKDIR /tmp
EXPOSE 8000

# /health needs no API key. The slim image has no curl: Python asks.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]

# Exec form: the service is PID 1 and gets `docker stop`'s SIGTERM itself, drains its requests and exits 0.
ENTRYPOINT ["wildvision", "serve", "--host", "0.0.0.0", "--port", "8000"]
