# fraudpipe's image: one image for every role (worker, API, monitor, retrainer, replayer, one-shot jobs); the
# command picks the role, e.g. `docker run fraudpipe:0.1.0 worker -l info`. Used by docker-compose.yml.
#
# Two stages: the builder installs fraudpipe and its dependencies into /opt/venv; the runtime copies that venv onto
# the same slim base (the venv's interpreter is the base image's) and runs as an unprivileged user.
# Base images carry a full version tag (tests/unit/test_compose.py refuses `latest` and bare major tags).

FROM python:3.11.13-slim-bookworm AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# A C compiler for the store's reply reader (features/_replay.c); only this stage has it.
RUN apt-get update \
    && apt-get install --yes --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, from pyproject.toml alone: this layer is rebuilt only when pyproject.toml changes. (The project
# builds with no package folders present: the C reader is optional, skipped here; its own empty wheel is removed again.)
COPY pyproject.toml README.md LICENSE ./
RUN pip install . && pip uninstall --yes fraudpipe

# Then the packages themselves (the list in pyproject's [tool.setuptools.packages.find]; a guard test keeps them equal).
COPY cli ./cli
COPY fraudpipe ./fraudpipe
COPY features ./features
COPY models ./models
COPY streams ./streams
RUN pip install --no-deps .


FROM python:3.11.13-slim-bookworm AS runtime

# LightGBM's wheel links the system OpenMP runtime.
RUN apt-get update \
    && apt-get install --yes --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

# An unprivileged user; /var/lib/fraudpipe is where compose mounts the shared volume (simulation, data, models). A
# named volume mounted there starts with this folder's owner, so the user can write to it.
RUN groupadd --system --gid 10001 fraudpipe \
    && useradd --system --uid 10001 --gid fraudpipe --home-dir /home/fraudpipe --create-home \
       --shell /usr/sbin/nologin fraudpipe \
    && install --directory --owner fraudpipe --group fraudpipe /var/lib/fraudpipe

COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib

# The working directory is not the data volume: relative paths (a replay checkpoint by default) stay out of it.
WORKDIR /home/fraudpipe
USER 10001:10001
# Smoke test: the packages import with this stage's libraries (LightGBM needs OpenMP), as this user, and the store
# reads with its C reader (built in the builder stage).
RUN python -c "import lightgbm, models.registry, streams.agents, streams.api; from features.reader import COMPILED; assert COMPILED"

# API (api.port), worker metrics (metrics.port), `fraudpipe monitor --every` gauges (monitor.metrics_port).
EXPOSE 8000 9108 9109
ENTRYPOINT ["fraudpipe"]
CMD ["--help"]
