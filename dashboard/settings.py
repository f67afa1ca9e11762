"""Settings for the backup control plane, all read from the environment.

Development defaults are embedded (SQLite and archives under var/, django-q2's ORM broker).
With DEBUG off the settings are production-safe and refuse to start without a real
SECRET_KEY and ALLOWED_HOSTS.
"""

from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from backups.validators import TAG_PATTERN
from dashboard.env import (
    env_bool,
    env_file,
    env_file_paths,
    env_int,
    env_list,
    env_list_matching,
    env_pairs,
    env_paths,
    env_str,
    env_url,
)

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

DEBUG = env_bool("DEBUG", default=True)
_DEV_SECRET = "insecure-development-key-set-SECRET_KEY-in-production"
SECRET_KEY = env_str("SECRET_KEY") or (_DEV_SECRET if DEBUG else None)
if not SECRET_KEY:
    raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off.")
if not DEBUG and SECRET_KEY == _DEV_SECRET:
    raise ImproperlyConfigured("SECRET_KEY is the development key; set a real one.")

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"] if DEBUG else [])
if not DEBUG and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("ALLOWED_HOSTS must be set when DEBUG is off.")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django_htmx",
    "axes",
    # Before django_q: its `qcluster` command is replaced by ours (backups/workers.py).
    "backups",
    "django_q",
    "dashboard",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "dashboard.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "backups.audit.AuditActorMiddleware",
    # Last, as django-axes asks: it turns a refused login into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "dashboard.urls"
WSGI_APPLICATION = "dashboard.wsgi.application"
ASGI_APPLICATION = "dashboard.asgi.application"

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
            ],
        },
    },
]

DATABASE_URL = env_str("DATABASE_URL")
if not DATABASE_URL:
    # The embedded default: a fresh clone has no var/ yet, and SQLite cannot create it.
    VAR_DIR.mkdir(exist_ok=True)
    DATABASE_URL = f"sqlite:///{VAR_DIR / 'db.sqlite3'}"
try:
    _database = dj_database_url.parse(DATABASE_URL, conn_max_age=60, conn_health_checks=True)
except ValueError as error:
    raise ImproperlyConfigured(f"DATABASE_URL is not a database URL: {error}") from None
if _database["ENGINE"] == "django.db.backends.sqlite3":
    _name = Path(_database["NAME"])
    _database["NAME"] = str(_name if _name.is_absolute() else BASE_DIR / _name)
    _database["CONN_MAX_AGE"] = 0
    # Web server and workers write concurrently: WAL lets readers proceed, IMMEDIATE
    # transactions take the write lock up front instead of failing on upgrade.
    _database["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
DATABASES = {"default": _database}
# The dashboard's own SQLite file (None on PostgreSQL): no restore may write over it.
DATABASE_FILE = (
    Path(_database["NAME"]) if _database["ENGINE"] == "django.db.backends.sqlite3" else None
)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# django-axes counts failed logins (the dashboard's and the admin's) per user name and
# client address, and refuses that pair for a cool-off period once it reaches the limit.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(seconds=env_int("LOGIN_COOLOFF_S", 15 * 60, minimum=1))
# Per user name and address together: a wrong password typed from elsewhere cannot lock a
# colleague out, and one address cannot go on guessing one account.
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
# No start-up banner: every command's output stays its own (one error line, JSON).
AXES_VERBOSE = False
# Behind reverse proxies the connection comes from the last proxy; the client is then the
# address the outermost of TRUSTED_PROXY_COUNT proxies saw (X-Forwarded-For, from the
# right). 0: the connection's own address, and X-Forwarded-For is ignored (it is forgeable).
TRUSTED_PROXY_COUNT = env_int("TRUSTED_PROXY_COUNT", 0, minimum=0)
AXES_CLIENT_IP_CALLABLE = "dashboard.middleware.client_address"

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "overview"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}

# Where archives live; every worker host must see the same folder (shared storage).
ARCHIVE_ROOT = Path(env_str("ARCHIVE_ROOT") or VAR_DIR / "archives")
if not ARCHIVE_ROOT.is_absolute():
    ARCHIVE_ROOT = BASE_DIR / ARCHIVE_ROOT
# The workers' private folder (created mode 0700, refused if others may write it) where a
# restore keeps the journal that undoes it after a crash. Local to each worker host.
STATE_DIR = Path(env_str("STATE_DIR") or VAR_DIR / "state")
if not STATE_DIR.is_absolute():
    STATE_DIR = BASE_DIR / STATE_DIR
# Folders a restore to a new location asked for in the dashboard must stay inside. The
# command line (a shell on the host) may restore elsewhere; nothing restores into, over or
# around ARCHIVE_ROOT, the dashboard's database or another source's location.
RESTORE_ROOTS = env_paths("RESTORE_ROOTS", [VAR_DIR / "restores"], base=BASE_DIR)
# PostgreSQL servers (HOST or HOST:PORT) and Kubernetes namespaces a restore to a new
# location may go to besides the source's own.
RESTORE_POSTGRES_HOSTS = env_list_matching(
    "RESTORE_POSTGRES_HOSTS",
    r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+|/[^,:]*)(:[0-9]{1,5})?",
    "HOST, HOST:PORT or [IPV6]:PORT",
)
RESTORE_POD_NAMESPACES = env_list_matching(
    "RESTORE_POD_NAMESPACES",
    r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?",
    "a Kubernetes namespace name",
)
# The age identity (private key) files that open encrypted backups, joined by ":". Read
# when a restore, a verification, a drill or an import needs them, never stored; a host
# that only backs up needs none (the policy's recipients are public keys).
AGE_IDENTITY_FILE = env_file_paths("AGE_IDENTITY_FILE")
METRICS_TOKEN = env_str("METRICS_TOKEN") or None
# Without a token, /metrics answers only in development or when explicitly opened.
METRICS_PUBLIC = env_bool("METRICS_PUBLIC", default=DEBUG)
# Retention buckets (hourly, daily, ...) are computed in this zone.
RETENTION_TIME_ZONE = env_str("RETENTION_TIME_ZONE", TIME_ZONE)
# A running run whose heartbeat is older than this is declared abandoned.
HEARTBEAT_INTERVAL_S = env_int("HEARTBEAT_INTERVAL_S", 5, minimum=1)
ABANDON_AFTER_S = env_int("ABANDON_AFTER_S", 120, minimum=10)
# A policy's SQLite check query is stopped after this long (it may only read, too).
CHECK_QUERY_TIMEOUT_S = env_int("CHECK_QUERY_TIMEOUT_S", 60, minimum=1)
# Free space kept in reserve beyond the last archive's size before a backup starts.
DISK_RESERVE_BYTES = env_int("DISK_RESERVE_BYTES", 64 * 1024 * 1024, minimum=0)

# Alerts and their notifications. APPRISE_CONFIG is an apprise configuration file (text
# or YAML) whose URLs hold the targets' tokens: they stay in that file, never in the
# database. Unset: alerts are evaluated and shown, and nobody is notified.
APPRISE_CONFIG = env_file("APPRISE_CONFIG", base=BASE_DIR)
# The dashboard's address as people reach it: messages link to the source's page.
DASHBOARD_URL = env_url("DASHBOARD_URL", "http://127.0.0.1:8000" if DEBUG else "")
# Where an alert goes when neither its source, nor the source's policy, nor its owner
# (OWNER=TAG pairs) names a tag; also where fleet-wide alerts go. `all`: every target.
NOTIFY_DEFAULT_TAGS = env_list_matching("NOTIFY_DEFAULT_TAGS", TAG_PATTERN, "a tag") or ["all"]
NOTIFY_OWNER_TAGS = env_pairs("NOTIFY_OWNER_TAGS", TAG_PATTERN, "OWNER=TAG")
# No worker has run housekeeping for this long: the workers are down.
WORKERS_SILENT_S = env_int("WORKERS_SILENT_S", 180, minimum=60)
# A firing alert nobody acknowledged is sent again after this long; 0: never.
ALERT_REMIND_S = env_int("ALERT_REMIND_S", 0, minimum=0)

# django-q2. Our Run table is the truth about work; the queue only carries run ids.
# `timeout` bounds one task (the longest backup we accept); `retry` must exceed it or the
# ORM broker re-delivers a task that is still running. Runs are claimed with a conditional
# UPDATE, so a re-delivery never runs twice, and max_attempts stops endless retries.
Q_TIMEOUT_S = env_int("Q_TIMEOUT_S", 6 * 3600, minimum=60)
# A run still queued this long after its task was sent is sent again (then after twice as
# long each time): its task may have died with a killed worker. Duplicates are harmless.
QUEUE_RESEND_AFTER_S = env_int("QUEUE_RESEND_AFTER_S", 60, minimum=10)
REDIS_URL = env_str("REDIS_URL") or None
Q_WORKERS = env_int("Q_WORKERS", 2, minimum=1)
Q_CLUSTER = {
    "name": "backups",
    "workers": Q_WORKERS,
    "recycle": 100,
    "timeout": Q_TIMEOUT_S,
    "retry": Q_TIMEOUT_S + 600,
    "max_attempts": 2,
    "ack_failures": True,
    "catch_up": False,
    "save_limit": 1000,
    # How many tasks a cluster takes from the broker ahead of its workers. Those sit in the
    # cluster's memory and die with it (Redis hands a task out once), so keep it at the
    # number of workers: a killed cluster then loses a few tasks, which housekeeping hands
    # out again (QUEUE_RESEND_AFTER_S), not a whole slot's worth.
    "queue_limit": Q_WORKERS,
    "label": "Queue",
    "poll": 1,
    "guard_cycle": 1,
    "scheduler": True,
}
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django_q": {"level": env_str("Q_LOG_LEVEL", "WARNING")}},
}

if not DEBUG:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^metrics$"]
