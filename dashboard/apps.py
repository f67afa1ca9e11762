"""The dashboard app: pages and their templates."""

from django.apps import AppConfig


class DashboardConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "dashboard"

    def ready(self) -> None:
        # Imported here: it imports the models, which cannot load before the apps are.
        from dashboard import logins

        logins.connect()
