"""URL map: the pages, the admin, login, and the two unauthenticated endpoints."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path

from dashboard import views

urlpatterns = [
    path("", views.overview, name="overview"),
    path("sources/<slug:slug>/", views.source_detail, name="source-detail"),
    path("sources/<slug:slug>/backup", views.source_backup, name="source-backup"),
    path("sources/<slug:slug>/verify", views.source_verify, name="source-verify"),
    path("sources/<slug:slug>/drill", views.source_drill, name="source-drill"),
    path("sources/<slug:slug>/runbook/", views.source_runbook, name="source-runbook"),
    path("alerts/", views.alert_list, name="alert-list"),
    path("alerts/<int:pk>/", views.alert_detail, name="alert-detail"),
    path("alerts/<int:pk>/ack", views.alert_ack, name="alert-ack"),
    path("alerts/silence", views.silence_add, name="silence-add"),
    path("alerts/silences/<int:pk>/end", views.silence_stop, name="silence-end"),
    path("runs/<int:pk>/", views.run_detail, name="run-detail"),
    path("runs/<int:pk>/live", views.run_live, name="run-live"),
    path("runs/<int:pk>/cancel", views.run_cancel_view, name="run-cancel"),
    path("runs/<int:pk>/files/", views.manifest_browse, name="manifest-browse"),
    path("runs/<int:pk>/diff/", views.manifest_diff, name="manifest-diff"),
    path("restore/", views.restore_start, name="restore-start"),
    path("restore/confirm", views.restore_confirm, name="restore-confirm"),
    path("reports/compliance/", views.compliance_report, name="compliance-report"),
    path("reports/compliance.csv", views.compliance_report_csv, name="compliance-report-csv"),
    path("activity/", views.activity, name="activity"),
    path("healthz", views.healthz, name="healthz"),
    path("metrics", views.metrics, name="metrics"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
]
