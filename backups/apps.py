"""The backups app: the domain of sources, policies, runs and archives."""

from django.apps import AppConfig


def _reap_on_worker_start(sender, proc_name, **kwargs):
    # Every worker start finishes off what a killed predecessor left: runs whose
    # heartbeat stopped become abandoned and their temporary files are removed.
    # Imported here: services import the models, which cannot load before the app does.
    from backups.services.runs import reap_abandoned

    reap_abandoned()


class BackupsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "backups"
    verbose_name = "Backups"

    def ready(self) -> None:
        # Imported here: django_q's signals and account_audit import models, which cannot
        # load before the apps are. `checks` registers the queue-safety checks that
        # `qcluster` and `migrate` run at start-up.
        from django_q.signals import post_spawn

        from backups import account_audit, checks  # noqa: F401

        account_audit.connect()
        post_spawn.connect(_reap_on_worker_start, dispatch_uid="backups-reap-on-spawn")
