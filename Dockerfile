# The chatsite image: one image for the one-shot migrate job and every daphne
# replica (see docker-compose.yml and deploy/entrypoint.sh).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

RUN groupadd --system app \
    && useradd --system --gid app --home-dir /app --no-create-home --shell /usr/sbin/nologin app

# Dependencies first: this layer is rebuilt only when requirements.txt changes.
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .

# Bake the hashed static files (and whitenoise's manifest) into the image. The
# key only satisfies settings.py at build time; it is never used at run time.
RUN DJANGO_DEBUG=0 DJANGO_SECRET_KEY=collectstatic-at-build-time-only \
        python manage.py collectstatic --noinput --verbosity 0 \
    && chown -R app:app /app/staticfiles

USER app
EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-m", "deploy.healthcheck"]

ENTRYPOINT ["sh", "/app/deploy/entrypoint.sh"]
CMD ["web"]
