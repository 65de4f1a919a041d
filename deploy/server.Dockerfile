# vision-grpc server image: the service only (Triton runs in its own container).
FROM python:3.11-slim
WORKDIR /app
COPY requirements/dev.lock ./requirements/
COPY api/python ./api/python
COPY pyproject.toml ./
COPY server ./server
# The generated API code is its own distribution (api/python), a dependency of the server's.
RUN pip install --no-cache-dir -c requirements/dev.lock ./api/python .
ENV VISION_HOST=0.0.0.0
EXPOSE 4603 4604
USER nobody
ENTRYPOINT ["python", "-m", "server"]
