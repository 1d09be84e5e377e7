"""Fleet settings: every value comes from the environment; a wrong one stops start-up naming it."""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlparse

import dj_database_url

from fleet.lib.cidrs import env_cidrs
from fleet.lib.env import ConfigError, env_bool, env_float, env_int, env_list, env_str, parse_duration

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("FLEET_VAR_DIR", str(BASE_DIR / "var")))
# The demo's converted models (SmolLM2 from its GGUF), kept across restarts; tests share one conversion.
FLEET_DEMO_MODELS = Path(env_str("FLEET_DEMO_MODELS", str(VAR_DIR / "demo" / "models")))


def _private_var_dir() -> Path:
    """VAR_DIR, created 0700: it holds the secret key, the SQLite database (sessions) and the model store."""
    VAR_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    return VAR_DIR


def _private_file(path: Path) -> str:
    """Create ``path`` empty and 0600 if it does not exist (SQLite then keeps that mode, and gives it to its
    -wal and -shm files); returns it as a string."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    return str(path)


def _secret_key() -> str:
    key = env_str("FLEET_SECRET_KEY")
    if key:
        if len(key) < 32:
            raise ConfigError("FLEET_SECRET_KEY is too short; use at least 32 random characters")
        return key
    # Embedded default: a key generated once and kept under var/, so sessions survive restarts.
    path = VAR_DIR / "secret_key"
    if not path.exists():
        import secrets

        _private_var_dir()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(50))
    return path.read_text().strip()


def _database() -> dict:
    url = env_str("DATABASE_URL")
    if not url:
        _private_var_dir()
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": _private_file(VAR_DIR / "fleet.sqlite3"),
            # Reuse connections: opening one per thread hop was 10-18% of Daphne's time under load.
            "CONN_MAX_AGE": 600,
            "CONN_HEALTH_CHECKS": True,
            # A file per test run (not shared memory): async consumers reach it from other threads.
            "TEST": {"NAME": str(VAR_DIR / f"test-{os.getpid()}.sqlite3")},
            "OPTIONS": {
                "timeout": 20,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    scheme = urlparse(url).scheme
    if scheme not in {"postgres", "postgresql", "pgsql", "sqlite"}:
        raise ConfigError(
            f"DATABASE_URL has scheme {scheme!r}; use postgres://user@host:5432/name (or sqlite:///path)"
        )
    try:
        config = dj_database_url.parse(url, conn_max_age=60, conn_health_checks=True)
    except Exception as exc:  # dj_database_url raises several types for malformed URLs
        raise ConfigError(f"DATABASE_URL could not be parsed ({exc}); use postgres://user@host:5432/name") from None
    return config


def _channel_layers() -> dict:
    url = env_str("REDIS_URL")
    if not url:
        return {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    parsed = urlparse(url)
    if parsed.scheme not in {"redis", "rediss", "unix"}:
        raise ConfigError(f"REDIS_URL has scheme {parsed.scheme!r}; use redis://host:6379/0")
    return {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                # redis-py 8 reads with a 5 s socket timeout by default, which races channels_redis's
                # 5 s blocking BZPOPMIN on every idle channel: consumers died with "Timeout reading"
                # (close 1011) every few seconds. A read timeout well above the blocking one keeps
                # a dead Redis detectable. Its pools also stop at 100 connections, and every agent
                # connect sends to and joins a group at once: a reconnect storm needs more.
                "hosts": [{"address": url, "socket_timeout": 30, "socket_connect_timeout": 5,
                           "max_connections": env_int("FLEET_REDIS_MAX_CONNECTIONS", 1000, minimum=10)}],
                "prefix": env_str("FLEET_CHANNEL_PREFIX", "fleet"),
                "capacity": 1000,
                "expiry": 30,
            },
        }
    }


def _allowed_hosts() -> list[str]:
    hosts = env_list("FLEET_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
    for host in hosts:
        if "://" in host or "/" in host:
            raise ConfigError(
                f"FLEET_ALLOWED_HOSTS entry {host!r} must be a bare host name such as fleet.example.com"
            )
    return hosts


try:
    SECRET_KEY = _secret_key()
    DEBUG = env_bool("FLEET_DEBUG", False)
    ALLOWED_HOSTS = _allowed_hosts()
    DATABASES = {"default": _database()}
    CHANNEL_LAYERS = _channel_layers()
    FLEET_OFFLINE_AFTER = env_float("FLEET_OFFLINE_AFTER", 15.0, minimum=1, maximum=3600)
    FLEET_HEARTBEAT_INTERVAL = env_float(
        "FLEET_HEARTBEAT_INTERVAL", min(5.0, FLEET_OFFLINE_AFTER / 3), minimum=0.2, maximum=600
    )
    FLEET_METRICS_INTERVAL = env_float("FLEET_METRICS_INTERVAL", 1.0, minimum=0.1, maximum=3600)
    FLEET_MAX_FRAME_BYTES = env_int("FLEET_MAX_FRAME_BYTES", 1024 * 1024, minimum=1024)
    FLEET_MAX_AGENT_CONNECTIONS = env_int("FLEET_MAX_AGENT_CONNECTIONS", 20000, minimum=1)
    FLEET_ENROLLMENT_DEFAULT_TTL = env_float("FLEET_ENROLLMENT_TTL", 3600.0, minimum=60)
    FLEET_PUBLIC_URL = env_str("FLEET_PUBLIC_URL").rstrip("/")
    FLEET_PRESENCE_SWEEP = env_bool("FLEET_PRESENCE_SWEEP", True)
    # The engine inside the server process (fleet/engine.py): the default with SQLite (one Daphne, the
    # demo); with PostgreSQL, `manage.py engine` runs it as a process of its own.
    FLEET_EMBEDDED_ENGINE = env_bool("FLEET_EMBEDDED_ENGINE", DATABASES["default"]["ENGINE"].endswith("sqlite3"))
    # Telemetry (fleet/telemetry): retention of 1-minute rollups, /metrics scrapers, alert threshold,
    # and the per-agent caps that keep one agent from growing Daphne's unbounded read queue.
    try:
        FLEET_METRICS_RETENTION = parse_duration(env_str("FLEET_METRICS_RETENTION", "30d"))
    except ValueError as _exc:
        raise ConfigError(f"FLEET_METRICS_RETENTION: {_exc}") from None
    # Matched against the client address Daphne reports. Behind nginx (Daphne --proxy-headers) that comes
    # from X-Forwarded-For, which docker/nginx.conf sets to $remote_addr: nginx is the only trusted hop.
    FLEET_METRICS_ALLOW = env_cidrs("FLEET_METRICS_ALLOW")
    FLEET_GPU_TEMP_ALERT_C = env_float("FLEET_GPU_TEMP_ALERT_C", 85.0, minimum=30, maximum=150)
    FLEET_AGENT_MAX_FRAMES_PER_SECOND = env_float("FLEET_AGENT_MAX_FRAMES_PER_SECOND", 200.0, minimum=1)
    FLEET_MAX_METRICS_FRAME_BYTES = env_int("FLEET_MAX_METRICS_FRAME_BYTES", 256 * 1024, minimum=1024)
    # Site caches (fleet-agent --site-cache): how long the token a node presents to its site's cache lasts;
    # renewed at each welcome, so a node cut off from the server keeps pulling from its cache that long.
    FLEET_SITE_TOKEN_TTL = env_float("FLEET_SITE_TOKEN_TTL", 24 * 3600.0, minimum=60, maximum=30 * 86400)
    FLEET_TELEMETRY_SHED_LAG = env_float("FLEET_TELEMETRY_SHED_LAG", 0.5, minimum=0.05, maximum=60)
    # Offer agents the compact metrics encoding (protocol v2: half the bytes, same server CPU). Off by
    # default: agents older than the v2 agent refuse a welcome that carries the offer.
    FLEET_COMPACT_METRICS = env_bool("FLEET_COMPACT_METRICS", False)
    # The /v1 gateway (fleet/playground/gateway.py): requests per minute per API key, per server process.
    FLEET_GATEWAY_REQUESTS_PER_MINUTE = env_float("FLEET_GATEWAY_REQUESTS_PER_MINUTE", 600.0, minimum=1)
    # A new rollout's soak after each activation when its strategy does not say (`make demo` uses 10 s).
    FLEET_ROLLOUT_MIN_READY_SECONDS = env_float("FLEET_ROLLOUT_MIN_READY_SECONDS", 30.0, minimum=0, maximum=86_400)
    # Login throttling (django-axes): this many failed sign-ins for one username from one address lock
    # that pair out for FLEET_LOGIN_LOCKOUT (a duration such as 15m); a success resets the count.
    FLEET_LOGIN_FAILURE_LIMIT = env_int("FLEET_LOGIN_FAILURE_LIMIT", 5, minimum=1, maximum=1000)
    try:
        FLEET_LOGIN_LOCKOUT = parse_duration(env_str("FLEET_LOGIN_LOCKOUT", "15m"))
    except ValueError as _exc:
        raise ConfigError(f"FLEET_LOGIN_LOCKOUT: {_exc}") from None
    CSRF_TRUSTED_ORIGINS = env_list("FLEET_CSRF_TRUSTED_ORIGINS", [])
    for _origin in CSRF_TRUSTED_ORIGINS:
        if not _origin.startswith(("http://", "https://")):
            raise ConfigError(f"FLEET_CSRF_TRUSTED_ORIGINS entry {_origin!r} must start with https:// or http://")
    from fleet.hub.config import hub_settings

    globals().update(hub_settings(VAR_DIR))  # FLEET_HUB_*, FLEET_HF_*, FLEET_BLOB_*: see fleet/hub/config.py
    LOG_LEVEL = env_str("FLEET_LOG_LEVEL", "INFO").upper()
    if LOG_LEVEL not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ConfigError(f"FLEET_LOG_LEVEL={LOG_LEVEL!r} is not a level; use DEBUG, INFO, WARNING or ERROR")
except ConfigError as error:
    sys.stderr.write(f"fleet: configuration error: {error}\n")
    raise SystemExit(2) from None

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "axes",
    "fleet.accounts",
    "fleet.inventory",
    "fleet.agents",
    "fleet.telemetry",
    "fleet.hub",
    "fleet.rollouts",
    "fleet.playground",
    "fleet.web",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "fleet.lib.middleware.SecurityHeadersMiddleware",
    "fleet.lib.middleware.StaticFilesMiddleware",  # WhiteNoise: /static/ (admin's too) without nginx
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",
]

AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # refuses a locked-out username + address before checking
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = FLEET_LOGIN_FAILURE_LIMIT
AXES_COOLOFF_TIME = timedelta(seconds=FLEET_LOGIN_LOCKOUT)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]  # a stranger elsewhere cannot lock a user out
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "fleet.accounts.throttle.locked_out"
# The address Daphne reports (from the one trusted proxy, see docker/nginx.conf), never a client header.
AXES_CLIENT_IP_CALLABLE = "fleet.accounts.throttle.client_ip"
AXES_VERBOSE = False

ROOT_URLCONF = "fleet.urls"
ASGI_APPLICATION = "fleet.asgi.application"
AUTH_USER_MODEL = "accounts.User"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "overview"
LOGOUT_REDIRECT_URL = "login"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "fleet.web.context.alerts",
            ],
        },
    },
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "static"
# WhiteNoise (fleet.lib.middleware.StaticFilesMiddleware) serves the finders' files: no collectstatic needed.
WHITENOISE_USE_FINDERS = True
WHITENOISE_MAX_AGE = 300
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
if not DEBUG and env_bool("FLEET_HTTPS", False):
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "filters": {"one_line_client_errors": {"()": "fleet.lib.logfilters.OneLineClientErrors"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"daphne": {"level": "WARNING"}, "django.channels.server": {"level": "WARNING"},
                "axes": {"level": "WARNING"}, "django.request": {"filters": ["one_line_client_errors"]}},
}
