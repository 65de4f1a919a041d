# vision-grpc server image: the service only (Triton runs in its own container).
FROM python:3.11-slim
WORKDIR /app
COPY requirements/dev.lock ./requirements/
COPY pyproject.toml ./
COPY server ./server
COPY vision ./vision
RUN pip install --no-cache-dir -c requirements/dev.lock .
ENV VISION_HOST=0.0.0.0
EXPOSE 4603 4604
USER nobody
ENTRYPOINT ["python", "-m", "server"]
