"""Pages answer with a page, never a 500, whatever a manifest or a query string holds."""

import pytest
from django.urls import reverse

from backups.audit import audit_record
from backups.models import ManifestEntry
from tests.pages_helpers import make_manifest, make_policy, make_run, make_source

pytestmark = pytest.mark.django_db


@pytest.fixture
def web():
    return make_source("web", policy=make_policy())


@pytest.mark.parametrize("mtime", [10**12, -(10**15), 2**62])
def test_a_file_with_an_absurd_modification_time_still_gets_a_page(client, viewer, web, mtime):
    backup = make_run(web)
    make_manifest(backup, {"odd.txt": "x", "fine.txt": "y"})
    ManifestEntry.objects.filter(name="odd.txt").update(mtime=mtime)
    client.force_login(viewer)
    url = reverse("manifest-browse", args=[backup.pk])
    for params in ({}, {"q": "odd"}):
        response = client.get(url, params)
        assert response.status_code == 200
        assert f"{mtime} (out of range)" in response.text
        assert "odd.txt" in response.text
    assert "2023-11-14" in client.get(url).text  # the sane file keeps its date


@pytest.mark.parametrize(
    "name, args", [("overview", []), ("source-detail", ["web"]), ("compliance-report", [])]
)
def test_a_huge_page_number_gives_an_empty_page(client, viewer, web, name, args):
    make_run(web)
    client.force_login(viewer)
    response = client.get(reverse(name, args=args), {"page": str(10**30)})
    assert response.status_code == 200
    assert response.context["pager"].items == []


def test_a_huge_page_of_the_activity_log_is_empty_too(client, operator, web):
    audit_record(actor=operator, action="test", outcome="succeeded", source=web)
    client.force_login(operator)
    response = client.get(reverse("activity"), {"page": str(10**30)})
    assert response.status_code == 200
    assert response.context["pager"].items == []
    assert "Nothing recorded" in response.text
