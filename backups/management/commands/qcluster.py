"""`qcluster`: django-q2's command, with a cluster that stops promptly on a host shutdown."""

from __future__ import annotations

import os

from django.conf import settings
from django_q.management.commands import qcluster

from backups.workers import Cluster


class Command(qcluster.Command):
    def handle(self, *args, **options):
        # As django-q2's own handle(), with our Cluster (see backups/workers.py).
        settings.SECRET_KEY  # noqa: B018 - refuse to start without a signing key
        if options.get("cluster_name"):
            os.environ["Q_CLUSTER_NAME"] = options["cluster_name"]
        cluster = Cluster()
        cluster.start()
        if options.get("run_once", False):
            cluster.stop()
